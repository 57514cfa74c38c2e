#include "run_arguments.hpp"

#include <cstdlib>
#include <filesystem>

namespace rvos_edge::run {

const char* const kUsage =
    "usage: rvos-edge-run DIR --video PATH --expr TEXT [--expr TEXT ...] [--out OUT]\n"
    "                     [--backend ort|trt] [--device cpu|cuda|tensorrt] [--precision P]\n"
    "                     [--clip-len N] [--max-frames N] [--threads N]\n"
    "\n"
    "Segment what each --expr describes in a video with the artifact folder DIR (from `rvos-edge export`).\n"
    "Writes OUT/masks/<frame>.png (one --expr) or OUT/masks/<k>_<slug>/<frame>.png (several),\n"
    "OUT/overlay.mp4 and OUT/summary.json, as `rvos-edge run` does. OUT defaults to runs/<video name>.\n"
    "Bad input: one line on stderr and exit code 2.\n";

namespace {

[[noreturn]] void usage_error(const std::string& message) {
    throw Error(ErrorKind::invalid_argument, message + " (see rvos-edge-run --help)");
}

long parse_int(const std::string& option, const std::string& value, long minimum) {
    char* end = nullptr;
    const long v = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0') usage_error(option + " needs an integer, got '" + value + "'");
    if (v < minimum) usage_error(option + " must be >= " + std::to_string(minimum) + ", got " + value);
    return v;
}

}  // namespace

Arguments parse_arguments(int argc, char** argv) {
    Arguments a;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            a.help = true;
            return a;
        }
        if (arg.rfind("--", 0) != 0) {
            if (!a.artifacts.empty()) usage_error("give one artifact folder, got '" + a.artifacts + "' and '" + arg + "'");
            a.artifacts = arg;
            continue;
        }
        if (i + 1 >= argc) usage_error(arg + " needs a value");
        const std::string value = argv[++i];
        if (arg == "--video") a.video = value;
        else if (arg == "--expr") a.expressions.push_back(value);
        else if (arg == "--out") a.out = value;
        else if (arg == "--backend") a.segmenter.backend.backend = value;
        else if (arg == "--device") a.segmenter.backend.device = value;
        else if (arg == "--precision") a.segmenter.backend.precision = value;
        else if (arg == "--clip-len") a.segmenter.clip_len = static_cast<int>(parse_int(arg, value, 1));
        else if (arg == "--max-frames") a.max_frames = parse_int(arg, value, 1);
        else if (arg == "--threads") a.segmenter.backend.threads = static_cast<int>(parse_int(arg, value, 1));
        else usage_error("unknown option " + arg);
    }
    if (a.artifacts.empty()) usage_error("give the artifact folder DIR");
    if (a.video.empty()) usage_error("give --video PATH");
    if (a.expressions.empty()) usage_error("give at least one --expr TEXT");
    if (a.out.empty()) a.out = (std::filesystem::path("runs") / std::filesystem::path(a.video).stem()).string();
    return a;
}

}  // namespace rvos_edge::run
