// The TensorRT backend (TensorRT 10.x): the folder's engines of one precision (built by
// `rvos-edge build DIR --backend trt`), run with enqueueV3 on one CUDA stream, every tensor
// bound by name to a device buffer. The history never leaves the device: history and
// history_out are two buffers whose addresses swap after each clip, and has_history is bound
// to one of two device constants (0 and 1). Compiled only where TensorRT and CUDA are found.
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "backends.hpp"
#include "rvos_edge/error.hpp"

namespace rvos_edge {
namespace {

void check(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw Error(ErrorKind::backend, "CUDA " + what + " failed: " + cudaGetErrorString(status));
}

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) last_error = message;
    }
    std::string last_error;
};

struct DeviceBuffer {
    void* data = nullptr;
    size_t bytes = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { cudaFree(data); }

    void reserve(size_t wanted) {
        if (wanted <= bytes) return;
        cudaFree(data);
        data = nullptr;
        bytes = 0;
        check(cudaMalloc(&data, wanted), "cudaMalloc");
        bytes = wanted;
    }
};

nvinfer1::DataType trt_type(const std::string& dtype) {
    if (dtype == "float32") return nvinfer1::DataType::kFLOAT;
    if (dtype == "int64") return nvinfer1::DataType::kINT64;
    if (dtype == "uint8") return nvinfer1::DataType::kUINT8;
    return nvinfer1::DataType::kBOOL;  // the contract's only other dtype
}

nvinfer1::Dims dims(std::initializer_list<int64_t> sizes) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(sizes.size());
    int i = 0;
    for (int64_t s : sizes) d.d[i++] = s;
    return d;
}

// One engine with its execution context; tensors are bound to device buffers by name.
class Engine {
public:
    Engine(nvinfer1::IRuntime& runtime, Logger& logger, const std::filesystem::path& file, const GraphSpec& spec)
        : file_(file.string()) {
        std::ifstream in(file, std::ios::binary);
        if (!in) throw Error(ErrorKind::artifacts, "cannot read " + file_);
        const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        engine_.reset(runtime.deserializeCudaEngine(data.data(), data.size()));
        if (!engine_)
            throw Error(ErrorKind::artifacts, "TensorRT cannot load " + file_ + ": " +
                                                  (logger.last_error.empty() ? "not an engine of this TensorRT"
                                                                             : logger.last_error));
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw Error(ErrorKind::backend, "TensorRT cannot create an execution context for " + file_);
        for (const auto* tensors : {&spec.inputs, &spec.outputs})
            for (const TensorSpec& t : *tensors)
                if (engine_->getTensorDataType(t.name.c_str()) != trt_type(t.dtype))
                    throw Error(ErrorKind::artifacts, file_ + ": tensor " + t.name + " is not " + t.dtype +
                                                          " (or is missing): rebuild the engines with this rvos-edge");
    }

    // Set an input's shape and bind `data` (device memory) to `name`.
    void input(const char* name, const nvinfer1::Dims& shape, const void* data) {
        if (!context_->setInputShape(name, shape))
            throw Error(ErrorKind::backend, file_ + " does not accept the shape given to " + std::string(name) +
                                                " (another clip length than it was built for?)");
        bind(name, const_cast<void*>(data));
    }

    void bind(const char* name, void* data) {
        if (!context_->setTensorAddress(name, data))
            throw Error(ErrorKind::backend, std::string("TensorRT cannot bind ") + name + " of " + file_);
    }

    void enqueue(cudaStream_t stream) {
        if (!context_->enqueueV3(stream)) throw Error(ErrorKind::backend, "TensorRT failed running " + file_);
    }

private:
    std::string file_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
};

class TensorRtBackend final : public Backend {
public:
    TensorRtBackend(const Manifest& manifest, const BackendOptions& options)
        : config_(manifest.config), precision_(options.precision) {
        auto files = manifest.tensorrt_engines.find(options.precision);
        if (files == manifest.tensorrt_engines.end())
            throw Error(ErrorKind::artifacts, manifest.folder.string() + " has no TensorRT " + options.precision +
                                                  " engines: build them with `rvos-edge build " + manifest.folder.string() +
                                                  " --backend trt --precision " + options.precision + "`");
        if (manifest.tensorrt_plugin.at(options.precision) == "jit")
            throw Error(ErrorKind::artifacts, "the " + options.precision + " engines of " + manifest.folder.string() +
                                                  " run the CubeFrameAttention plugin just in time (Python): build "
                                                  "engines without it, or with TensorRT >= 10.9 (compiled into the engine)");
        check(cudaSetDevice(options.device_id), "cudaSetDevice");
        check(cudaStreamCreate(&stream_), "cudaStreamCreate");
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw Error(ErrorKind::backend, "TensorRT cannot create a runtime");
        const auto specs = expected_graphs(config_, manifest.clip_len_min, manifest.clip_len_max);
        text_ = std::make_unique<Engine>(*runtime_, logger_, manifest.folder / files->second.at(kTextEncoder),
                                         specs.at(kTextEncoder));
        clip_ = std::make_unique<Engine>(*runtime_, logger_, manifest.folder / files->second.at(kClipModel),
                                         specs.at(kClipModel));

        const size_t ctx = static_cast<size_t>(config_.context_length), ce = static_cast<size_t>(config_.embed_dim);
        tokens_.reserve(ctx * sizeof(int64_t));
        feats_.reserve(ctx * ce * sizeof(float));
        mask_.reserve(ctx);
        global_.reserve(ce * sizeof(float));
        for (DeviceBuffer* h : {&history_, &history_out_}) h->reserve(history_bytes());
        const float flags[2] = {0.0f, 1.0f};
        flags_.reserve(sizeof flags);
        check(cudaMemcpy(flags_.data, flags, sizeof flags, cudaMemcpyHostToDevice), "cudaMemcpy");
        clear_history();
    }

    ~TensorRtBackend() override {
        text_.reset();
        clip_.reset();
        if (stream_) cudaStreamDestroy(stream_);
    }

    TextFeatures encode_text(const std::vector<int64_t>& tokens) override {
        const int64_t ctx = config_.context_length, ce = config_.embed_dim;
        check(cudaMemcpyAsync(tokens_.data, tokens.data(), tokens.size() * sizeof(int64_t), cudaMemcpyHostToDevice,
                              stream_), "cudaMemcpyAsync");
        text_->input("tokens", dims({1, ctx}), tokens_.data);
        text_->bind("text_feats", feats_.data);
        text_->bind("text_mask", mask_.data);
        text_->bind("text_global", global_.data);
        text_->enqueue(stream_);
        TextFeatures out;
        out.feats.resize(static_cast<size_t>(ctx * ce));
        out.mask.resize(static_cast<size_t>(ctx));
        out.global.resize(static_cast<size_t>(ce));
        download(out.feats.data(), feats_, out.feats.size() * sizeof(float));
        download(out.mask.data(), mask_, out.mask.size());
        download(out.global.data(), global_, out.global.size() * sizeof(float));
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        return out;
    }

    void run_clip(const uint8_t* frames, int clip_len, const TextFeatures& text, std::vector<float>& logits) override {
        const int64_t tc = clip_len, s = config_.image_size, m = config_.mask_size(), ctx = config_.context_length,
                      ce = config_.embed_dim, mh = config_.history_prompts;
        const size_t frame_bytes = static_cast<size_t>(tc * s * s * 3);
        logits.resize(static_cast<size_t>(tc * m * m));
        frames_.reserve(frame_bytes);
        logits_.reserve(logits.size() * sizeof(float));
        upload(frames_, frames, frame_bytes);
        upload(feats_, text.feats.data(), text.feats.size() * sizeof(float));
        upload(mask_, text.mask.data(), text.mask.size());
        upload(global_, text.global.data(), text.global.size() * sizeof(float));
        clip_->input("frames", dims({1, tc, s, s, 3}), frames_.data);
        clip_->input("text_feats", dims({1, ctx, ce}), feats_.data);
        clip_->input("text_mask", dims({1, ctx}), mask_.data);
        clip_->input("text_global", dims({1, ce}), global_.data);
        clip_->input("history", dims({1, mh, ce}), history_.data);
        clip_->input("has_history", dims({1, 1}), static_cast<float*>(flags_.data) + (has_history_ ? 1 : 0));
        clip_->bind("mask_logits", logits_.data);
        clip_->bind("history_out", history_out_.data);
        clip_->enqueue(stream_);
        download(logits.data(), logits_, logits.size() * sizeof(float));
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        std::swap(history_.data, history_out_.data);  // the next clip reads this one's history_out
        has_history_ = true;
    }

    void clear_history() override {
        check(cudaMemsetAsync(history_.data, 0, history_bytes(), stream_), "cudaMemsetAsync");
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        has_history_ = false;
    }

    std::string name() const override { return "trt"; }
    std::string precision() const override { return precision_; }

private:
    size_t history_bytes() const {
        return static_cast<size_t>(config_.history_prompts * config_.embed_dim) * sizeof(float);
    }
    void upload(DeviceBuffer& to, const void* from, size_t bytes) {
        check(cudaMemcpyAsync(to.data, from, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    }
    void download(void* to, const DeviceBuffer& from, size_t bytes) {
        check(cudaMemcpyAsync(to, from.data, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    }

    ModelConfig config_;
    std::string precision_;
    Logger logger_;
    cudaStream_t stream_ = nullptr;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<Engine> text_, clip_;
    DeviceBuffer tokens_, feats_, mask_, global_, frames_, logits_, history_, history_out_, flags_;
    bool has_history_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& manifest, const BackendOptions& options) {
    return std::make_unique<TensorRtBackend>(manifest, options);
}

}  // namespace rvos_edge
