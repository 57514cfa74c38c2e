// The ONNX Runtime backend: the two graphs of an artifact folder in two sessions, on the CPU or
// on the CUDA / TensorRT execution providers when the linked onnxruntime has them (CPU stays the
// fallback for nodes they do not take), as rvos_edge/engines/ort/runner.py.
#include <algorithm>
#include <set>

#include <onnxruntime_cxx_api.h>

#include "backends.hpp"
#include "rvos_edge/error.hpp"

namespace rvos_edge {
namespace {

Ort::Env& environment() {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "rvos-edge");
    return env;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

ONNXTensorElementDataType element_type(const std::string& dtype) {
    if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (dtype == "int64") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    if (dtype == "uint8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    if (dtype == "bool") return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    throw Error(ErrorKind::artifacts, "the native runtime feeds no " + dtype + " tensors");
}

void append_provider(Ort::SessionOptions& options, const std::string& device, int device_id) {
    if (device == "cpu") return;
    const std::string full = device == "cuda" ? "CUDAExecutionProvider" : device == "tensorrt" ? "TensorrtExecutionProvider" : "";
    if (full.empty()) throw Error(ErrorKind::invalid_argument, "unknown device '" + device + "' (choose from cpu, cuda, tensorrt)");
    const std::vector<std::string> available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), full) == available.end()) {
        std::string have;
        for (const std::string& p : available) have += (have.empty() ? "" : ", ") + p;
        throw Error(ErrorKind::backend, full + " is not available in the linked onnxruntime (it has: " + have +
                                            "); link onnxruntime-gpu for cuda/tensorrt");
    }
    const std::string id = std::to_string(device_id);
    const char* keys[] = {"device_id"};
    const char* values[] = {id.c_str()};
    const OrtApi& api = Ort::GetApi();
    if (device == "cuda") {
        OrtCUDAProviderOptionsV2* cuda = nullptr;
        Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
        std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> owned(cuda, api.ReleaseCUDAProviderOptions);
        Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 1));
        options.AppendExecutionProvider_CUDA_V2(*cuda);
    } else {
        OrtTensorRTProviderOptionsV2* trt = nullptr;
        Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, decltype(api.ReleaseTensorRTProviderOptions)> owned(trt, api.ReleaseTensorRTProviderOptions);
        Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys, values, 1));
        options.AppendExecutionProvider_TensorRT_V2(*trt);
    }
}

// One graph: its session, and its tensor names in the order the backend passes them.
struct Graph {
    Ort::Session session{nullptr};
    std::vector<std::string> input_names, output_names;
    std::vector<const char*> inputs, outputs;
};

// Open `file` and check that its tensors are the contract's `spec` (names and element types).
Graph open_graph(const std::filesystem::path& file, const GraphSpec& spec, const Ort::SessionOptions& options) {
    Graph g;
    try {
        g.session = Ort::Session(environment(), file.c_str(), options);
    } catch (const Ort::Exception& e) {
        throw Error(ErrorKind::artifacts, "onnxruntime cannot load " + file.string() + ": " + first_line(e.what()));
    }
    Ort::AllocatorWithDefaultOptions allocator;
    for (int k = 0; k < 2; ++k) {
        const auto& want = k == 0 ? spec.inputs : spec.outputs;
        const size_t count = k == 0 ? g.session.GetInputCount() : g.session.GetOutputCount();
        std::set<std::string> have_names;
        for (size_t i = 0; i < count; ++i) {
            const std::string name = (k == 0 ? g.session.GetInputNameAllocated(i, allocator)
                                             : g.session.GetOutputNameAllocated(i, allocator)).get();
            have_names.insert(name);
            const Ort::TypeInfo type = k == 0 ? g.session.GetInputTypeInfo(i) : g.session.GetOutputTypeInfo(i);
            for (const TensorSpec& t : want) {
                if (t.name == name && type.GetTensorTypeAndShapeInfo().GetElementType() != element_type(t.dtype))
                    throw Error(ErrorKind::artifacts, file.string() + ": tensor " + name + " is not " + t.dtype +
                                                          " as the contract says (the native runtime runs graphs with "
                                                          "the contract's dtypes)");
            }
        }
        std::set<std::string> want_names;
        for (const TensorSpec& t : want) want_names.insert(t.name);
        if (have_names != want_names) {
            std::string have, expected;
            for (const auto& n : have_names) have += (have.empty() ? "" : ", ") + n;
            for (const auto& n : want_names) expected += (expected.empty() ? "" : ", ") + n;
            throw Error(ErrorKind::artifacts, file.string() + " has " + (k == 0 ? "inputs " : "outputs ") + have +
                                                  ", expected " + expected + ": re-export with this version of rvos-edge");
        }
        for (const TensorSpec& t : want) (k == 0 ? g.input_names : g.output_names).push_back(t.name);
    }
    for (const auto& n : g.input_names) g.inputs.push_back(n.c_str());
    for (const auto& n : g.output_names) g.outputs.push_back(n.c_str());
    return g;
}

class OrtBackend final : public Backend {
public:
    OrtBackend(const Manifest& manifest, const BackendOptions& options)
        : config_(manifest.config), precision_(options.precision),
          history_(static_cast<size_t>(config_.history_prompts * config_.embed_dim), 0.0f),
          history_out_(history_.size(), 0.0f) {
        Ort::SessionOptions session_options;
        session_options.SetLogSeverityLevel(3);  // errors only
        if (options.threads < 0)
            throw Error(ErrorKind::invalid_argument, "threads must be >= 1 (or 0 for the default), got " + std::to_string(options.threads));
        if (options.threads > 0) {
            session_options.SetIntraOpNumThreads(options.threads);
            session_options.SetInterOpNumThreads(1);
        }
        append_provider(session_options, options.device, options.device_id);
        const auto files = manifest.graph_files(options.precision);
        const auto specs = expected_graphs(config_, manifest.clip_len_min, manifest.clip_len_max);
        text_ = open_graph(manifest.folder / files.at(kTextEncoder), specs.at(kTextEncoder), session_options);
        clip_ = open_graph(manifest.folder / files.at(kClipModel), specs.at(kClipModel), session_options);
    }

    TextFeatures encode_text(const std::vector<int64_t>& tokens) override {
        const int64_t ctx = config_.context_length, ce = config_.embed_dim;
        TextFeatures out;
        out.feats.resize(static_cast<size_t>(ctx * ce));
        out.mask.resize(static_cast<size_t>(ctx));
        out.global.resize(static_cast<size_t>(ce));
        const std::vector<int64_t> tokens_shape{1, ctx}, feats_shape{1, ctx, ce}, mask_shape{1, ctx}, global_shape{1, ce};
        Ort::Value input = Ort::Value::CreateTensor<int64_t>(cpu_, const_cast<int64_t*>(tokens.data()), tokens.size(),
                                                             tokens_shape.data(), tokens_shape.size());
        Ort::Value outputs[3] = {tensor(out.feats.data(), out.feats.size() * 4, feats_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
                                 tensor(out.mask.data(), out.mask.size(), mask_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL),
                                 tensor(out.global.data(), out.global.size() * 4, global_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)};
        run(text_, &input, outputs, kTextEncoder);
        return out;
    }

    void run_clip(const uint8_t* frames, int clip_len, const TextFeatures& text, std::vector<float>& logits) override {
        const int64_t tc = clip_len, s = config_.image_size, m = config_.mask_size(), ctx = config_.context_length,
                      ce = config_.embed_dim, mh = config_.history_prompts;
        logits.resize(static_cast<size_t>(tc * m * m));
        float has_history = has_history_ ? 1.0f : 0.0f;
        const std::vector<int64_t> frames_shape{1, tc, s, s, 3}, feats_shape{1, ctx, ce}, mask_shape{1, ctx},
            global_shape{1, ce}, history_shape{1, mh, ce}, flag_shape{1, 1}, logits_shape{1, tc, m, m};
        Ort::Value inputs[6] = {
            tensor(frames, static_cast<size_t>(tc * s * s * 3), frames_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8),
            tensor(text.feats.data(), text.feats.size() * 4, feats_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            tensor(text.mask.data(), text.mask.size(), mask_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL),
            tensor(text.global.data(), text.global.size() * 4, global_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            tensor(history_.data(), history_.size() * 4, history_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            tensor(&has_history, 4, flag_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)};
        Ort::Value outputs[2] = {
            tensor(logits.data(), logits.size() * 4, logits_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            tensor(history_out_.data(), history_out_.size() * 4, history_shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)};
        run(clip_, inputs, outputs, kClipModel);
        history_.swap(history_out_);
        has_history_ = true;
    }

    void clear_history() override {
        std::fill(history_.begin(), history_.end(), 0.0f);
        has_history_ = false;
    }

    std::string name() const override { return "ort"; }
    std::string precision() const override { return precision_; }

private:
    // A tensor over caller-owned memory (ONNX Runtime does not write inputs).
    Ort::Value tensor(const void* data, size_t bytes, const std::vector<int64_t>& shape, ONNXTensorElementDataType type) {
        return Ort::Value::CreateTensor(cpu_, const_cast<void*>(data), bytes, shape.data(), shape.size(), type);
    }

    // The graph's inputs are in the contract's order (open_graph), as the callers pass them.
    void run(Graph& graph, const Ort::Value* inputs, Ort::Value* outputs, const char* what) {
        try {
            graph.session.Run(Ort::RunOptions{nullptr}, graph.inputs.data(), inputs, graph.inputs.size(),
                              graph.outputs.data(), outputs, graph.outputs.size());
        } catch (const Ort::Exception& e) {
            throw Error(ErrorKind::backend, std::string("onnxruntime failed running ") + what + ": " + first_line(e.what()));
        }
    }

    ModelConfig config_;
    std::string precision_;
    Ort::MemoryInfo cpu_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Graph text_, clip_;
    std::vector<float> history_, history_out_;
    bool has_history_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const BackendOptions& options) {
    return std::make_unique<OrtBackend>(manifest, options);
}

}  // namespace rvos_edge
