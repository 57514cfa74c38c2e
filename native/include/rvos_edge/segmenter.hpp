// rvos_edge::Segmenter: a stream of frames and an expression in, one mask per frame out,
// the clip pipeline of the Python runtime (rvos_edge/runtime/segmenter.py, DESIGN.md section 5):
//
//     auto seg = rvos_edge::Segmenter::open("artifacts/");
//     seg.set_expression("the red cup on the left");
//     for (cv::Mat frame; camera.read(frame);)            // H x W x 3 uint8 BGR
//         for (const auto& r : seg.push(frame)) use(r.index, r.mask, r.score);
//     for (const auto& r : seg.flush()) use(r.index, r.mask, r.score);
//
// - Each pushed frame is resized to S x S with OpenCV exactly as Python does (halved while at
//   least 4S, then INTER_AREA when it shrinks in both directions, INTER_LINEAR otherwise, then
//   BGR -> RGB); only that copy is kept.
// - Frames are grouped into clips of clip_len(); push returns the clip's results when a frame
//   completes it. flush runs a short last clip padded by repeating its last frame; the padded
//   outputs are dropped.
// - The text features of an expression are computed once and kept for the last 16 expressions.
// - The clip model's history_out is the next clip's history; set_expression and reset clear it,
//   flush keeps it.
// - Mask logits are upsampled bilinearly (cv::resize INTER_LINEAR, half-pixel centres) to each
//   frame's own size; mask = logit > 0; score = mean sigmoid probability inside the mask, 0 if empty.
// - index counts frames since open or the last reset, from 0; set_expression does not restart it.
// Every failure is a rvos_edge::Error with one line saying what is wrong; when the engine fails on
// a clip, that clip's frames are dropped and the stream goes on with the next frame.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "rvos_edge/backend.hpp"
#include "rvos_edge/error.hpp"
#include "rvos_edge/export.hpp"
#include "rvos_edge/manifest.hpp"

namespace rvos_edge {

struct Result {
    int64_t index = 0;  // frame index in the stream
    cv::Mat mask;       // CV_8UC1 at the frame's size: 255 inside the mask, 0 outside
    double score = 0;   // mean sigmoid probability inside the mask, 0.0 for an empty mask
};

// Seconds per stage and how much work was done (the Python runtime's StageTimes).
struct StageTimes {
    double resize_s = 0, text_s = 0, engine_s = 0, upsample_s = 0;
    int64_t frames = 0, clips = 0, text_runs = 0;
};

struct SegmenterOptions {
    BackendOptions backend;
    int clip_len = 0;          // 0: the model's clip length, within what the export accepts
    int text_cache_size = 16;  // expressions whose text features are kept
};

class RVOS_EDGE_API Segmenter {
public:
    // Check the artifact folder's manifest and files, and open its graphs on the backend.
    static Segmenter open(const std::filesystem::path& artifacts, const SegmenterOptions& options = {});

    Segmenter(Segmenter&&) noexcept;
    Segmenter& operator=(Segmenter&&) noexcept;
    ~Segmenter();

    // Segment what `text` (UTF-8) describes from the next frame on; the history starts afresh.
    // Frames pushed under the previous expression are run with it first (as by flush) and their
    // results returned. A blank text is an Error; one longer than the model's context is cut to
    // its first words (expression_truncated() says so).
    std::vector<Result> set_expression(const std::string& text);

    // Add one H x W x 3 uint8 BGR frame (CV_8UC3); the clip's results when it completes a clip.
    std::vector<Result> push(const cv::Mat& frame);

    // Run the pending frames as a clip padded with copies of its last frame; their results.
    std::vector<Result> flush();

    // Start a new stream: pending frames are dropped, the history is cleared, the frame index
    // restarts at 0. The expression stays.
    void reset();

    int clip_len() const;
    int pending() const;                     // frames pushed but not yet run
    const std::string& expression() const;   // "" before the first set_expression
    bool expression_truncated() const;
    const Manifest& manifest() const;
    const Backend& backend() const;
    const StageTimes& timings() const;

private:
    struct State;
    explicit Segmenter(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
};

}  // namespace rvos_edge
