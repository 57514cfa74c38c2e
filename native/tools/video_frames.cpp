#include "video_frames.hpp"

#include <algorithm>
#include <filesystem>

#include <unistd.h>

namespace rvos_edge::run {
namespace {

constexpr size_t kDepth = 8;

}  // namespace

VideoFrames::VideoFrames(const std::string& path) : description_("video " + path) {
    namespace fs = std::filesystem;
    if (!fs::exists(path)) throw Error(ErrorKind::invalid_argument, "video " + path + " does not exist");
    if (!fs::is_regular_file(path)) throw Error(ErrorKind::invalid_argument, "video " + path + " is not a file");
    if (access(path.c_str(), R_OK) != 0)
        throw Error(ErrorKind::invalid_argument, "video " + path + " is not readable (permission denied)");
    if (!capture_.open(path) || !capture_.isOpened())
        throw Error(ErrorKind::invalid_argument,
                    "cannot open video " + path + ": not a video OpenCV can decode, or a damaged file");
    const double count = capture_.get(cv::CAP_PROP_FRAME_COUNT), fps = capture_.get(cv::CAP_PROP_FPS);
    length_ = count > 0 ? static_cast<long>(count) : 0;
    fps_ = fps > 0 ? fps : 0;
    cv::Mat first;
    if (!capture_.read(first) || first.empty())
        throw Error(ErrorKind::invalid_argument,
                    description_ + " gave no frame: it has zero frames or none can be decoded");
    queue_.push_back(first);
    thread_ = std::thread(&VideoFrames::decode, this);
}

VideoFrames::~VideoFrames() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
}

void VideoFrames::decode() {
    long decoded = 1;
    for (;;) {
        cv::Mat frame;
        bool ok = false;
        std::string error;
        try {
            ok = capture_.read(frame) && !frame.empty();
        } catch (const cv::Exception& e) {
            error = "decoding " + description_ + " failed at frame " + std::to_string(decoded) + ": " + e.err;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        if (!ok) {
            if (error.empty() && length_ > 0 && length_ - decoded > std::max(2L, length_ / 50))
                error = "decoding " + description_ + " stopped at frame " + std::to_string(decoded) + " of the " +
                        std::to_string(length_) + " it declares (truncated or damaged file)";
            error_ = error;
            done_ = true;
            changed_.notify_all();
            return;
        }
        changed_.wait(lock, [&] { return stop_ || queue_.size() < kDepth; });
        if (stop_) return;
        queue_.push_back(std::move(frame));
        ++decoded;
        changed_.notify_all();
    }
}

std::optional<cv::Mat> VideoFrames::next() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return !queue_.empty() || done_; });
    if (queue_.empty()) {
        if (!error_.empty()) throw DecodeError(error_);
        return std::nullopt;
    }
    cv::Mat frame = std::move(queue_.front());
    queue_.pop_front();
    changed_.notify_all();
    return frame;
}

}  // namespace rvos_edge::run
