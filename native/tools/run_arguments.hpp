// The command line of rvos-edge-run (the `rvos-edge run` options that apply to a video).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "rvos_edge/segmenter.hpp"

namespace rvos_edge::run {

struct Arguments {
    std::string artifacts;
    std::string video;
    std::vector<std::string> expressions;
    std::string out;                   // default runs/<video stem>
    std::optional<long> max_frames;
    SegmenterOptions segmenter;
    bool help = false;
};

extern const char* const kUsage;

// Parse argv; bad usage is an Error(invalid_argument) with one line.
Arguments parse_arguments(int argc, char** argv);

}  // namespace rvos_edge::run
