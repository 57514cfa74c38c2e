#include "rvos_edge/segmenter.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include "clip_pipeline.hpp"
#include "rvos_edge/tokenizer.hpp"

namespace rvos_edge {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct CachedText {
    std::string text;
    TextFeatures features;
    bool truncated = false;
};

int resolve_clip_len(const Manifest& m, int wanted) {
    if (wanted == 0) return std::max(m.clip_len_min, std::min(m.config.clip_len, m.clip_len_max));
    if (wanted < m.clip_len_min || wanted > m.clip_len_max) {
        const std::string accepted = m.clip_len_min == m.clip_len_max
                                         ? "exactly " + std::to_string(m.clip_len_min)
                                         : std::to_string(m.clip_len_min) + ".." + std::to_string(m.clip_len_max);
        throw Error(ErrorKind::invalid_argument, "clip length " + std::to_string(wanted) + " is not accepted by " +
                                                     m.folder.string() + " (it takes " + accepted +
                                                     "); re-export with --clip-len to change it");
    }
    return wanted;
}

}  // namespace

struct Segmenter::State {
    Manifest manifest;
    std::unique_ptr<Backend> backend;
    int clip_len = 0;
    size_t text_cache_size = 16;
    std::vector<CachedText> text_cache;   // most recently used first
    std::string expression;
    bool has_expression = false;
    bool truncated = false;
    TextFeatures text;
    std::vector<uint8_t> frames;           // [clip_len, S, S, 3] RGB of the clip being filled
    std::vector<cv::Size> sizes;           // the pending frames' own sizes
    std::vector<float> logits;
    int64_t next_index = 0;
    StageTimes timings;

    size_t frame_bytes() const {
        const size_t s = static_cast<size_t>(manifest.config.image_size);
        return s * s * 3;
    }

    const CachedText& encode(const std::string& text_in) {
        auto hit = std::find_if(text_cache.begin(), text_cache.end(), [&](const CachedText& c) { return c.text == text_in; });
        if (hit != text_cache.end()) {
            std::rotate(text_cache.begin(), hit, hit + 1);
            return text_cache.front();
        }
        const auto t0 = std::chrono::steady_clock::now();
        const ModelConfig& c = manifest.config;
        TokenizedText tokens = Tokenizer::shared().tokenize(text_in, c.language_prompts(), c.context_length);
        CachedText entry{text_in, backend->encode_text(tokens.tokens), tokens.truncated};
        timings.text_s += seconds_since(t0);
        timings.text_runs += 1;
        text_cache.insert(text_cache.begin(), std::move(entry));
        if (text_cache.size() > text_cache_size) text_cache.pop_back();
        return text_cache.front();
    }

    std::vector<Result> run_clip() {
        const size_t n = sizes.size(), bytes = frame_bytes();
        for (size_t i = n; i < static_cast<size_t>(clip_len); ++i)  // pad with the last frame
            std::copy_n(frames.begin() + static_cast<std::ptrdiff_t>((n - 1) * bytes), bytes,
                        frames.begin() + static_cast<std::ptrdiff_t>(i * bytes));
        auto t0 = std::chrono::steady_clock::now();
        try {
            backend->run_clip(frames.data(), clip_len, text, logits);
        } catch (...) {
            sizes.clear();  // the clip is dropped, so the next push starts a new one
            throw;
        }
        timings.engine_s += seconds_since(t0);
        timings.clips += 1;

        t0 = std::chrono::steady_clock::now();
        const int m = manifest.config.mask_size();
        std::vector<Result> results(n);
        for (size_t i = 0; i < n; ++i) {
            const cv::Mat frame_logits(m, m, CV_32F, logits.data() + i * static_cast<size_t>(m * m));
            results[i].index = next_index + static_cast<int64_t>(i);
            clip_pipeline::mask_and_score(frame_logits, sizes[i].height, sizes[i].width, results[i].mask, results[i].score);
        }
        timings.upsample_s += seconds_since(t0);
        next_index += static_cast<int64_t>(n);
        sizes.clear();
        return results;
    }
};

Segmenter::Segmenter(std::unique_ptr<State> state) : state_(std::move(state)) {}
Segmenter::Segmenter(Segmenter&&) noexcept = default;
Segmenter& Segmenter::operator=(Segmenter&&) noexcept = default;
Segmenter::~Segmenter() = default;

Segmenter Segmenter::open(const std::filesystem::path& artifacts, const SegmenterOptions& options) {
    if (options.text_cache_size < 1)
        throw Error(ErrorKind::invalid_argument, "text cache size must be >= 1, got " + std::to_string(options.text_cache_size));
    auto state = std::make_unique<State>();
    state->manifest = load_manifest(artifacts);
    state->clip_len = resolve_clip_len(state->manifest, options.clip_len);
    state->backend = open_backend(state->manifest, options.backend);
    state->text_cache_size = static_cast<size_t>(options.text_cache_size);
    state->frames.resize(state->frame_bytes() * static_cast<size_t>(state->clip_len));
    return Segmenter(std::move(state));
}

std::vector<Result> Segmenter::set_expression(const std::string& text) {
    if (is_blank(text))
        throw Error(ErrorKind::invalid_argument,
                    "the expression is empty: give a sentence describing the object, got '" + text + "'");
    const CachedText& encoded = state_->encode(text);
    TextFeatures features = encoded.features;
    const bool truncated = encoded.truncated;
    std::vector<Result> results = flush();
    state_->text = std::move(features);
    state_->truncated = truncated;
    state_->expression = text;
    state_->has_expression = true;
    state_->backend->clear_history();
    return results;
}

std::vector<Result> Segmenter::push(const cv::Mat& frame) {
    State& s = *state_;
    if (!s.has_expression)
        throw Error(ErrorKind::invalid_argument, "no expression set: call set_expression(text) before push(frame)");
    const auto t0 = std::chrono::steady_clock::now();
    const int size = s.manifest.config.image_size;
    cv::Mat slot(size, size, CV_8UC3, s.frames.data() + s.sizes.size() * s.frame_bytes());
    clip_pipeline::prepare_frame(frame, size, slot);
    s.sizes.push_back(frame.size());
    s.timings.resize_s += seconds_since(t0);
    s.timings.frames += 1;
    return static_cast<int>(s.sizes.size()) == s.clip_len ? s.run_clip() : std::vector<Result>{};
}

std::vector<Result> Segmenter::flush() { return state_->sizes.empty() ? std::vector<Result>{} : state_->run_clip(); }

void Segmenter::reset() {
    state_->sizes.clear();
    state_->next_index = 0;
    state_->backend->clear_history();
}

int Segmenter::clip_len() const { return state_->clip_len; }
int Segmenter::pending() const { return static_cast<int>(state_->sizes.size()); }
const std::string& Segmenter::expression() const { return state_->expression; }
bool Segmenter::expression_truncated() const { return state_->truncated; }
const Manifest& Segmenter::manifest() const { return state_->manifest; }
const Backend& Segmenter::backend() const { return *state_->backend; }
const StageTimes& Segmenter::timings() const { return state_->timings; }

}  // namespace rvos_edge
