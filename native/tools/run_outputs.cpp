#include "run_outputs.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace rvos_edge::run {
namespace {

const std::array<cv::Scalar, 6> kColoursBgr = {cv::Scalar(0, 255, 0),   cv::Scalar(0, 0, 255),
                                               cv::Scalar(255, 0, 0),   cv::Scalar(0, 255, 255),
                                               cv::Scalar(255, 0, 255), cv::Scalar(255, 255, 0)};
const char* const kOverlayName = "overlay.mp4";

std::string strip_dashes(const std::string& s) {
    const size_t begin = s.find_first_not_of('-');
    if (begin == std::string::npos) return "";
    return s.substr(begin, s.find_last_not_of('-') - begin + 1);
}

// The text in lower case, runs of other characters as "-", at most 40 characters (Python's _slug;
// non-ASCII characters count as "other").
std::string slug(const std::string& text) {
    std::string s;
    for (unsigned char c : text) {
        if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) s.push_back(static_cast<char>(c));
        else if (s.empty() || s.back() != '-') s.push_back('-');
    }
    s = strip_dashes(strip_dashes(s).substr(0, 40));
    return s.empty() ? "expression" : s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The palette colour farthest from the mean of the frame's pixels under `mask` (Python's contrasting_colour).
cv::Scalar contrasting_colour(const cv::Mat& frame, const cv::Mat& mask) {
    const cv::Scalar mean = cv::mean(frame, mask);
    size_t best = 0;
    double best_distance = -1;
    for (size_t k = 0; k < kColoursBgr.size(); ++k) {
        const double d = cv::norm(kColoursBgr[k] - mean);
        if (d > best_distance) {
            best = k;
            best_distance = d;
        }
    }
    return kColoursBgr[best];
}

std::string frame_name(int64_t index) {
    char name[32];
    std::snprintf(name, sizeof name, "%05lld", static_cast<long long>(index));
    return name;
}

}  // namespace

std::vector<std::string> mask_folders(const std::vector<std::string>& expressions) {
    if (expressions.size() == 1) return {"masks"};
    std::vector<std::string> folders;
    for (size_t k = 0; k < expressions.size(); ++k) folders.push_back("masks/" + std::to_string(k) + "_" + slug(expressions[k]));
    return folders;
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw Error(ErrorKind::invalid_argument, "cannot write " + path.string());
}

cv::Mat overlay(const cv::Mat& frame, const std::vector<cv::Mat>& masks) {
    cv::Mat out = frame.clone();
    const int thickness = std::max(1, static_cast<int>(std::nearbyint(std::min(frame.rows, frame.cols) / 160.0)));
    for (const cv::Mat& mask : masks) {
        if (cv::countNonZero(mask) == 0) continue;
        const cv::Scalar colour = contrasting_colour(frame, mask);
        for (int y = 0; y < out.rows; ++y) {
            const uint8_t* m = mask.ptr<uint8_t>(y);
            cv::Vec3b* p = out.ptr<cv::Vec3b>(y);
            for (int x = 0; x < out.cols; ++x)
                if (m[x])
                    for (int c = 0; c < 3; ++c) p[x][c] = static_cast<uint8_t>(0.5 * p[x][c] + 0.5 * colour[c]);
        }
    }
    for (size_t k = 0; k < masks.size(); ++k) {
        std::vector<std::vector<cv::Point>> contours;
        cv::findContours(masks[k], contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
        cv::drawContours(out, contours, -1, kColoursBgr[k % kColoursBgr.size()], thickness);
    }
    return out;
}

Outputs::Outputs(std::filesystem::path folder, const std::vector<std::string>& folders, double fps)
    : folder_(std::move(folder)), fps_(fps), nonempty_(folders.size(), 0), masks_(folders.size()) {
    for (const std::string& f : folders) {
        dirs_.push_back(folder_ / f);
        std::filesystem::create_directories(dirs_.back());
    }
}

void Outputs::add_frame(int64_t index, const cv::Mat& frame) { frames_[index] = frame; }

void Outputs::add_results(size_t k, const std::vector<Result>& results) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const Result& r : results) {
        std::vector<uint8_t> png;
        if (!cv::imencode(".png", r.mask, png))
            throw Error(ErrorKind::backend, "cannot encode the mask of frame " + std::to_string(r.index) + " as PNG");
        write_file(dirs_[k] / (frame_name(r.index) + ".png"), std::string(png.begin(), png.end()));
        masks_[k][r.index] = r.mask;
        nonempty_[k] += cv::countNonZero(r.mask) > 0;
    }
    write_s_ += seconds_since(t0);
}

void Outputs::write_overlays() {
    const auto t0 = std::chrono::steady_clock::now();
    auto ready = [&] {
        if (!frames_.count(next_)) return false;
        for (const auto& m : masks_)
            if (!m.count(next_)) return false;
        return true;
    };
    while (ready()) {
        std::vector<cv::Mat> masks;
        for (auto& m : masks_) {
            masks.push_back(m.at(next_));
            m.erase(next_);
        }
        cv::Mat image = overlay(frames_.at(next_), masks);
        frames_.erase(next_);
        if (!writer_.isOpened()) {
            size_ = image.size();
            const auto path = folder_ / kOverlayName;
            writer_.open(path.string(), cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps_, size_);
            if (!writer_.isOpened())
                throw Error(ErrorKind::backend, "cannot write " + path.string() + ": OpenCV has no mp4v encoder here");
        }
        if (image.size() != size_) cv::resize(image, image, size_, 0, 0, cv::INTER_AREA);
        writer_.write(image);
        ++next_;
    }
    write_s_ += seconds_since(t0);
}

void Outputs::finish() { writer_.release(); }

}  // namespace rvos_edge::run
