// What rvos-edge-run writes, in the layout of `rvos-edge run` (rvos_edge/runtime/run.py):
// OUT/masks[/<k>_<slug>]/<frame>.png (8-bit, 255 inside the mask), OUT/overlay.mp4 (the frames
// with each expression's mask blended in, mp4v, at the first frame's size) and OUT/summary.json.
// Every file is written to a temporary name in OUT and renamed when complete.
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

// Create OUT and prove a file can be written in it; an Error otherwise.
void prepare_out(const std::filesystem::path& out);

// Write `bytes` to `path` through a temporary file in the same folder.
void atomic_write(const std::filesystem::path& path, const std::string& bytes);

class Outputs {
public:
    Outputs(std::filesystem::path out, const std::vector<std::string>& folders, double fps);
    ~Outputs();  // drops a partial overlay unless finish() ran

    void add_frame(int64_t index, const cv::Mat& frame);
    void add_results(size_t expression, const std::vector<Result>& results);
    void write_overlays();  // overlay frames whose masks are all in, in frame order
    void finish();          // close the overlay and move it to its final name

    double write_s() const { return write_s_; }
    const std::vector<long>& nonempty() const { return nonempty_; }

private:
    std::filesystem::path out_, partial_;
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
