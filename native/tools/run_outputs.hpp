// What rvos-edge-run writes into its output folder (OutputFolder's staging folder), in the layout
// of `rvos-edge run` (rvos_edge/runtime/run.py): masks[/<k>_<slug>]/<frame>.png (8-bit, 255
// inside the mask), overlay.mp4 (mp4v, at the first frame's size: each mask tinted half-and-half
// in the palette colour farthest from the mean of the pixels under it, then outlined in its own
// colour) and, by the caller, summary.json.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include "rvos_edge/segmenter.hpp"

namespace rvos_edge::run {

// Mask folder of each expression, relative to OUT: "masks" for one, "masks/<k>_<slug>" for several.
std::vector<std::string> mask_folders(const std::vector<std::string>& expressions);

// Write `bytes` to `path`; an Error when it cannot.
void write_file(const std::filesystem::path& path, const std::string& bytes);

// The overlay frame of `frame` (BGR) and the masks of each expression (CV_8UC1, nonzero inside).
cv::Mat overlay(const cv::Mat& frame, const std::vector<cv::Mat>& masks);

class Outputs {
public:
    Outputs(std::filesystem::path folder, const std::vector<std::string>& mask_folders, double fps);

    void add_frame(int64_t index, const cv::Mat& frame);
    void add_results(size_t expression, const std::vector<Result>& results);
    void write_overlays();  // overlay frames whose masks are all in, in frame order
    void finish();          // close the overlay video

    double write_s() const { return write_s_; }
    const std::vector<long>& nonempty() const { return nonempty_; }

private:
    std::filesystem::path folder_;
    std::vector<std::filesystem::path> dirs_;
    double fps_;
    double write_s_ = 0;
    std::vector<long> nonempty_;
    std::map<int64_t, cv::Mat> frames_;
    std::vector<std::map<int64_t, cv::Mat>> masks_;
    int64_t next_ = 0;
    cv::VideoWriter writer_;
    cv::Size size_;
};

}  // namespace rvos_edge::run
