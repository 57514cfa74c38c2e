// rvos-edge-run DIR --video PATH --expr TEXT --out OUT: `rvos-edge run` for a video, natively.
// The same outputs (run_outputs.hpp), written as one unit (output_folder.hpp), and the same
// summary.json fields as rvos_edge/runtime/run.py. Bad input is one line on stderr and exit
// code 2, before anything is written. A video that stops early still gets its masks, overlay
// and summary, then exit 2. Ctrl-C or SIGTERM stops the loop between two frames: the frames
// read so far are finished, then exit 130; a second signal ends the process at once, leaving
// OUT as it was.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "rvos_edge/segmenter.hpp"
#include "rvos_edge/tokenizer.hpp"
#include "output_folder.hpp"
#include "run_arguments.hpp"
#include "run_outputs.hpp"
#include "video_frames.hpp"

namespace rvos_edge::run {
namespace {

constexpr double kDefaultFps = 10.0;
constexpr const char* kSummaryName = "summary.json";

volatile std::sig_atomic_t stop_signal = 0;

void on_signal(int signal) {
    if (stop_signal) {  // the second one: abandon the run
        std::signal(signal, SIG_DFL);
        std::raise(signal);
    }
    stop_signal = signal;
}

// While alive, what native code writes to stderr (FFmpeg's and OpenCV's log lines) goes to
// /dev/null: failures come back as one-line errors instead.
class QuietStderr {
public:
    QuietStderr() : saved_(dup(2)) {
        std::fflush(stderr);
        const int devnull = open("/dev/null", O_WRONLY);
        if (saved_ >= 0 && devnull >= 0) dup2(devnull, 2);
        if (devnull >= 0) close(devnull);
    }
    ~QuietStderr() {
        if (saved_ >= 0) {
            dup2(saved_, 2);
            close(saved_);
        }
    }
    QuietStderr(const QuietStderr&) = delete;
    QuietStderr& operator=(const QuietStderr&) = delete;

private:
    int saved_;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const Arguments& args) {
    for (const std::string& text : args.expressions)
        if (is_blank(text))
            throw Error(ErrorKind::invalid_argument,
                        "the expression is empty: give a sentence describing the object, got '" + text + "'");
    std::unique_ptr<VideoFrames> source;
    {
        QuietStderr quiet;
        source = std::make_unique<VideoFrames>(args.video);
    }
    std::vector<Segmenter> segmenters;
    std::vector<bool> truncated;
    for (const std::string& text : args.expressions) {
        segmenters.push_back(Segmenter::open(args.artifacts, args.segmenter));
        segmenters.back().set_expression(text);
        truncated.push_back(segmenters.back().expression_truncated());
        if (truncated.back())
            std::cerr << "rvos-edge-run: warning: expression longer than the model's "
                      << segmenters.back().manifest().config.max_words()
                      << "-token context, its end is ignored: '" << text << "'\n";
    }
    const std::filesystem::path out(args.out);
    OutputFolder folder(out, kSummaryName);
    const std::filesystem::path staging = folder.staging();

    const std::vector<std::string> folders = mask_folders(args.expressions);
    Outputs outputs(staging, folders, source->fps() > 0 ? source->fps() : kDefaultFps);
    double decode_s = 0;
    long n = 0;
    std::string error;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const auto t_start = std::chrono::steady_clock::now();
    {
        QuietStderr quiet;
        while ((!args.max_frames || n < *args.max_frames) && !stop_signal) {
            const auto t0 = std::chrono::steady_clock::now();
            std::optional<cv::Mat> frame;
            try {
                frame = source->next();
            } catch (const DecodeError& e) {
                error = e.what();
            }
            decode_s += seconds_since(t0);
            if (!frame) break;
            outputs.add_frame(n, *frame);
            for (size_t k = 0; k < segmenters.size(); ++k) outputs.add_results(k, segmenters[k].push(*frame));
            outputs.write_overlays();
            ++n;
        }
        for (size_t k = 0; k < segmenters.size(); ++k) outputs.add_results(k, segmenters[k].flush());
        outputs.write_overlays();
        outputs.finish();
    }
    const double wall = seconds_since(t_start);

    StageTimes times;
    for (const Segmenter& s : segmenters) {
        const StageTimes& t = s.timings();
        times.resize_s += t.resize_s;
        times.text_s += t.text_s;
        times.engine_s += t.engine_s;
        times.upsample_s += t.upsample_s;
    }
    nlohmann::ordered_json ms = {{"decode", 1000 * decode_s}, {"resize", 1000 * times.resize_s},
                                 {"text", 1000 * times.text_s}, {"engine", 1000 * times.engine_s},
                                 {"upsample", 1000 * times.upsample_s}, {"write", 1000 * outputs.write_s()}};
    nlohmann::ordered_json per_frame;
    for (auto& [key, value] : ms.items()) per_frame[key] = n ? value.get<double>() / static_cast<double>(n) : 0.0;
    nlohmann::ordered_json expressions = nlohmann::ordered_json::array();
    for (size_t k = 0; k < args.expressions.size(); ++k)
        expressions.push_back({{"text", args.expressions[k]}, {"masks", folders[k]}, {"truncated", bool(truncated[k])},
                               {"nonempty_masks", outputs.nonempty()[k]}});
    const Segmenter& first = segmenters.front();
    const double fps_end_to_end = wall > 0 ? static_cast<double>(n) / wall : 0.0;
    const double fps_engine = times.engine_s > 0 ? static_cast<double>(n) / times.engine_s : 0.0;
    nlohmann::ordered_json summary = {
        {"source", source->description()}, {"artifacts", args.artifacts}, {"backend", first.backend().name()},
        {"precision", first.backend().precision()}, {"clip_len", first.clip_len()}, {"frames", n},
        {"expressions", expressions}, {"overlay", n ? nlohmann::ordered_json("overlay.mp4") : nlohmann::ordered_json()},
        {"fps", {{"end_to_end", fps_end_to_end}, {"engine", fps_engine}}},
        {"ms_total", ms}, {"ms_per_frame", per_frame}, {"wall_s", wall}, {"runtime", "native"}};
    if (!error.empty()) {
        summary["stopped_at"] = n;
        summary["error"] = error;
    } else if (stop_signal) {
        summary["stopped_at"] = n;
        summary["interrupted"] = true;
    }
    write_file(staging / kSummaryName, summary.dump(2) + "\n");
    folder.commit();
    std::printf("rvos-edge-run: %ld frames x %zu expression(s), %.1f fps end-to-end (%.1f fps engine), %s %s -> %s\n", n,
                args.expressions.size(), fps_end_to_end, fps_engine, first.backend().name().c_str(),
                first.backend().precision().c_str(), out.string().c_str());
    if (!error.empty())
        throw DecodeError(error + "; the " + std::to_string(n) + " frames before it are kept, see " +
                          (out / kSummaryName).string());
    if (stop_signal) {
        std::cerr << "rvos-edge-run: interrupted after " << n << " frames (outputs complete for those)\n";
        return 130;
    }
    return 0;
}

}  // namespace
}  // namespace rvos_edge::run

int main(int argc, char** argv) {
    try {
        const rvos_edge::run::Arguments args = rvos_edge::run::parse_arguments(argc, argv);
        if (args.help) {
            std::fputs(rvos_edge::run::kUsage, stdout);
            return 0;
        }
        return rvos_edge::run::run(args);
    } catch (const rvos_edge::Error& e) {
        std::cerr << "rvos-edge-run: error: " << e.what() << "\n";
    } catch (const cv::Exception& e) {
        std::cerr << "rvos-edge-run: error: OpenCV: " << e.err << "\n";
    } catch (const std::exception& e) {
        std::cerr << "rvos-edge-run: error: " << e.what() << "\n";
    }
    return 2;
}
