// Frames of a video file for rvos-edge-run, decoded on a background thread up to 8 frames ahead
// (as the Python runtime's prefetch), with the checks of rvos_edge/runtime/video.py: the file
// exists, is readable, opens and gives a first frame (else an Error before any output is
// written); decoding that ends more than max(2, 2%) frames short of the count the container
// declares is a DecodeError after the frames before it.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <opencv2/videoio.hpp>

#include "rvos_edge/error.hpp"

namespace rvos_edge::run {

// The video stopped before its end; the frames before it were delivered.
class DecodeError : public Error {
public:
    explicit DecodeError(const std::string& message) : Error(ErrorKind::invalid_argument, message) {}
};

class VideoFrames {
public:
    explicit VideoFrames(const std::string& path);
    ~VideoFrames();
    VideoFrames(const VideoFrames&) = delete;
    VideoFrames& operator=(const VideoFrames&) = delete;

    // The next frame (BGR), or nullopt at the end; a DecodeError when the video stopped early.
    std::optional<cv::Mat> next();

    const std::string& description() const { return description_; }
    double fps() const { return fps_; }           // 0 when unknown
    long length() const { return length_; }       // 0 when unknown

private:
    void decode();

    std::string description_;
    double fps_ = 0;
    long length_ = 0;
    cv::VideoCapture capture_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<cv::Mat> queue_;
    bool done_ = false, stop_ = false;
    std::string error_;
    std::thread thread_;
};

}  // namespace rvos_edge::run
