// The one interface every inference backend implements (ONNX Runtime, TensorRT): the text
// encoder once per expression, the clip model once per clip, with the history kept inside
// the backend (on the device for TensorRT) from one clip to the next.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rvos_edge/export.hpp"
#include "rvos_edge/manifest.hpp"

namespace rvos_edge {

// The text encoder's outputs for one expression (batch 1).
struct TextFeatures {
    std::vector<float> feats;    // [1, context_length, Ce]
    std::vector<uint8_t> mask;   // [1, context_length], bool as 0/1 bytes
    std::vector<float> global;   // [1, Ce]
};

struct BackendOptions {
    std::string backend = "ort";    // "ort" or "trt"
    std::string precision = "fp32";
    std::string device = "cpu";     // ort: "cpu", "cuda" or "tensorrt" (execution provider); trt: "cuda"
    int device_id = 0;
    int threads = 0;                // ort: intra-op threads (0: ONNX Runtime's default, all cores)
};

class Backend {
public:
    virtual ~Backend() = default;

    // tokens: [1, context_length] int64.
    virtual TextFeatures encode_text(const std::vector<int64_t>& tokens) = 0;

    // frames: [1, clip_len, S, S, 3] uint8 RGB. Writes mask_logits [clip_len, 4h, 4w] to `logits`
    // (resized to fit). The clip's history_out becomes the next clip's history; the first clip
    // after construction or clear_history() gets zeros and has_history = 0.
    virtual void run_clip(const uint8_t* frames, int clip_len, const TextFeatures& text,
                          std::vector<float>& logits) = 0;

    virtual void clear_history() = 0;

    // "ort" or "trt", and the precision of the graphs or engines it runs.
    virtual std::string name() const = 0;
    virtual std::string precision() const = 0;
};

// The backend `options.backend` over the checked artifact folder `manifest`.
RVOS_EDGE_API std::unique_ptr<Backend> open_backend(const Manifest& manifest, const BackendOptions& options);

}  // namespace rvos_edge
