// The steps of the clip pipeline that are not model calls, as rvos_edge/runtime/pipeline.py.
#pragma once

#include <opencv2/core.hpp>

namespace rvos_edge::clip_pipeline {

// A BGR CV_8UC3 frame -> RGB size x size into `rgb` (CV_8UC3, allocated by the caller): halved
// (INTER_AREA to cols / 2 x rows / 2) while at least 4 * size in both directions, then cv::resize
// with INTER_AREA when it shrinks in both directions, INTER_LINEAR when it grows in at least one;
// a frame already size x size is only converted. Other frames are an Error.
void prepare_frame(const cv::Mat& bgr, int size, cv::Mat& rgb);

// Mask logits m x m (CV_32F) -> mask at height x width (CV_8U, 255 where the bilinearly
// upsampled logit > 0) and its score (mean sigmoid probability inside, 0 when empty).
void mask_and_score(const cv::Mat& logits, int height, int width, cv::Mat& mask, double& score);

}  // namespace rvos_edge::clip_pipeline
