#include "clip_pipeline.hpp"

#include <cmath>
#include <string>

#include <opencv2/imgproc.hpp>

#include "rvos_edge/error.hpp"

namespace rvos_edge::clip_pipeline {

void prepare_frame(const cv::Mat& bgr, int size, cv::Mat& rgb) {
    if (bgr.type() != CV_8UC3 || bgr.dims != 2 || bgr.empty())
        throw Error(ErrorKind::invalid_argument,
                    "a frame must be H x W x 3 uint8 BGR (CV_8UC3), got " + std::to_string(bgr.rows) + " x " +
                        std::to_string(bgr.cols) + " of type " + cv::typeToString(bgr.type()));
    if (bgr.rows == size && bgr.cols == size) {
        cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
        return;
    }
    // halved while at least 4 * size in both directions (2 x 2 means for even sides), as Python does
    cv::Mat resized = bgr;
    while (resized.rows >= 4 * size && resized.cols >= 4 * size) {
        cv::Mat half;
        cv::resize(resized, half, cv::Size(resized.cols / 2, resized.rows / 2), 0, 0, cv::INTER_AREA);
        resized = half;
    }
    if (resized.rows != size || resized.cols != size) {
        const int interpolation = resized.rows >= size && resized.cols >= size ? cv::INTER_AREA : cv::INTER_LINEAR;
        cv::Mat out;
        cv::resize(resized, out, cv::Size(size, size), 0, 0, interpolation);
        resized = out;
    }
    cv::cvtColor(resized, rgb, cv::COLOR_BGR2RGB);
}

void mask_and_score(const cv::Mat& logits, int height, int width, cv::Mat& mask, double& score) {
    cv::Mat upsampled = logits;
    if (logits.rows != height || logits.cols != width)
        cv::resize(logits, upsampled, cv::Size(width, height), 0, 0, cv::INTER_LINEAR);
    mask.create(height, width, CV_8UC1);
    // float32 sigmoid as numpy computes it, summed in double
    double sum = 0;
    int64_t inside = 0;
    for (int y = 0; y < height; ++y) {
        const float* row = upsampled.ptr<float>(y);
        uint8_t* out = mask.ptr<uint8_t>(y);
        for (int x = 0; x < width; ++x) {
            const bool on = row[x] > 0.0f;
            out[x] = on ? 255 : 0;
            if (on) {
                sum += 1.0f / (1.0f + std::exp(-row[x]));
                ++inside;
            }
        }
    }
    score = inside ? sum / static_cast<double>(inside) : 0.0;
}

}  // namespace rvos_edge::clip_pipeline
