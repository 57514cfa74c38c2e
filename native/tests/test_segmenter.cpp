// Segmenter's clip pipeline on the demo export and the fixture video: history carried and reset,
// the last clip padded and trimmed, masks at each frame's size, errors for bad input.
#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include "rvos_edge/segmenter.hpp"
#include "test_support.hpp"

using rvos_edge::Result;
using rvos_edge::Segmenter;

namespace {

std::vector<cv::Mat> video_frames(int count) {
    cv::VideoCapture capture(rvos_edge::testing::fixture("video.avi").string());
    std::vector<cv::Mat> frames;
    for (cv::Mat f; static_cast<int>(frames.size()) < count && capture.read(f);) frames.push_back(f.clone());
    return frames;
}

Segmenter open_demo(const std::string& expression) {
    Segmenter seg = Segmenter::open(rvos_edge::testing::fixture("demo"));
    seg.set_expression(expression);
    return seg;
}

std::vector<Result> push_all(Segmenter& seg, const std::vector<cv::Mat>& frames) {
    std::vector<Result> out;
    for (const cv::Mat& f : frames)
        for (Result& r : seg.push(f)) out.push_back(std::move(r));
    return out;
}

void expect_same(const std::vector<Result>& a, const std::vector<Result>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].score, b[i].score) << "result " << i;
        EXPECT_EQ(cv::countNonZero(a[i].mask != b[i].mask), 0) << "result " << i;
    }
}

bool any_differs(const std::vector<Result>& a, const std::vector<Result>& b) {
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].score != b[i].score || cv::countNonZero(a[i].mask != b[i].mask) > 0) return true;
    return false;
}

}  // namespace

TEST(Segmenter, HistoryIsCarriedAndResetOnANewExpression) {
    Segmenter seg = open_demo("the red circle moving right");
    const auto clip = video_frames(seg.clip_len());
    const auto first = push_all(seg, clip);
    const auto second = push_all(seg, clip);  // same frames, with the first clip's history
    ASSERT_EQ(first.size(), clip.size());
    EXPECT_TRUE(any_differs(first, second)) << "the history changed nothing: the reset below would go unnoticed";

    seg.set_expression("the blue square");
    const auto after_switch = push_all(seg, clip);
    Segmenter fresh = open_demo("the blue square");
    expect_same(after_switch, push_all(fresh, clip));

    seg.set_expression("the red circle moving right");  // cached text features, history cleared again
    expect_same(push_all(seg, clip), first);
    EXPECT_EQ(seg.timings().text_runs, 2);
}

TEST(Segmenter, ResetClearsHistoryAndIndex) {
    Segmenter seg = open_demo("the red circle moving right");
    const auto clip = video_frames(seg.clip_len());
    const auto first = push_all(seg, clip);
    push_all(seg, clip);
    seg.push(clip[0]);
    seg.reset();
    EXPECT_EQ(seg.pending(), 0);
    const auto again = push_all(seg, clip);
    expect_same(again, first);
    EXPECT_EQ(again.front().index, 0);
}

TEST(Segmenter, LastClipIsPaddedWithItsLastFrameAndTrimmed) {
    Segmenter seg = open_demo("the red circle moving right");
    const int tc = seg.clip_len();
    const auto frames = video_frames(tc + 2);
    const auto full = push_all(seg, frames);
    EXPECT_EQ(full.size(), static_cast<size_t>(tc));
    EXPECT_EQ(seg.pending(), 2);
    const auto tail = seg.flush();
    ASSERT_EQ(tail.size(), 2u);
    EXPECT_EQ(tail[0].index, tc);
    EXPECT_EQ(tail[1].index, tc + 1);

    // the same as a full clip of those two frames and copies of the last one
    Segmenter padded = open_demo("the red circle moving right");
    std::vector<cv::Mat> explicit_padding(frames.begin(), frames.end());
    explicit_padding.resize(static_cast<size_t>(2 * tc), frames.back());
    const auto reference = push_all(padded, explicit_padding);
    expect_same(tail, {reference[static_cast<size_t>(tc)], reference[static_cast<size_t>(tc) + 1]});
}

TEST(Segmenter, MasksHaveEachFramesSize) {
    Segmenter seg = open_demo("the red circle moving right");
    const auto frame = video_frames(1).front();
    std::vector<cv::Size> sizes = {{200, 150}, {64, 48}, {300, 301}, {7, 5}, {128, 128}, {129, 127}};
    std::vector<Result> results;
    for (const cv::Size& s : sizes) {
        cv::Mat resized;
        cv::resize(frame, resized, s);
        for (Result& r : seg.push(resized)) results.push_back(std::move(r));
    }
    for (Result& r : seg.flush()) results.push_back(std::move(r));
    ASSERT_EQ(results.size(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
        EXPECT_EQ(results[i].mask.size(), sizes[i]);
        EXPECT_EQ(results[i].mask.type(), CV_8UC1);
        EXPECT_GE(results[i].score, 0.0);
        EXPECT_LE(results[i].score, 1.0);
    }
}

TEST(Segmenter, BadInputIsAnInvalidArgumentError) {
    Segmenter seg = Segmenter::open(rvos_edge::testing::fixture("demo"));
    auto kind_of = [](auto&& call) {
        try {
            call();
        } catch (const rvos_edge::Error& e) {
            return std::optional<rvos_edge::ErrorKind>(e.kind());
        }
        return std::optional<rvos_edge::ErrorKind>();
    };
    const auto invalid = std::optional<rvos_edge::ErrorKind>(rvos_edge::ErrorKind::invalid_argument);
    const cv::Mat frame = rvos_edge::testing::random_frame(20, 30, 0);
    EXPECT_EQ(kind_of([&] { seg.push(frame); }), invalid);  // no expression yet
    EXPECT_EQ(kind_of([&] { seg.set_expression(" \t\n"); }), invalid);
    seg.set_expression("the dog");
    EXPECT_EQ(kind_of([&] { seg.push(cv::Mat(20, 30, CV_8UC1)); }), invalid);
    EXPECT_EQ(kind_of([&] { seg.push(cv::Mat()); }), invalid);
    rvos_edge::SegmenterOptions options;
    options.clip_len = 5;
    EXPECT_EQ(kind_of([&] { Segmenter::open(rvos_edge::testing::fixture("demo"), options); }), invalid);
    options.clip_len = 0;
    options.backend.backend = "nope";
    EXPECT_EQ(kind_of([&] { Segmenter::open(rvos_edge::testing::fixture("demo"), options); }), invalid);
}
