// manifest.json of an artifact folder (DESIGN.md section 4), read and checked as the Python
// runtime does (rvos_edge/artifacts/manifest.py): format and format version, the model config,
// the contract tensors of both graphs (names, dtypes and shapes), the tokenizer vocabulary's
// sha256 against the one built into this library, and each listed file's sha256.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "rvos_edge/export.hpp"

namespace rvos_edge {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kArtifactFormat = "rvos-edge-artifacts";
inline constexpr int kFormatVersion = 1;
inline constexpr const char* kTextEncoder = "text_encoder";
inline constexpr const char* kClipModel = "clip_model";

// The fields of the Python ModelConfig the runtime needs.
struct ModelConfig {
    std::string name;
    int image_size = 0;       // S: frames are S x S
    int patch_size = 0;
    int embed_dim = 0;        // Ce
    int context_length = 0;   // 77
    int clip_len = 0;         // Tc, the model's default clip length
    int vision_prompts = 0;   // m_v = m_e
    int history_prompts = 0;  // m_h

    int language_prompts() const { return vision_prompts; }
    int mask_size() const { return 4 * (image_size / patch_size); }  // side of mask_logits
    int max_words() const { return context_length - 2 - language_prompts(); }
};

// One dimension of a tensor: a size, or a name ("B", "Tc") when symbolic.
struct Dim {
    int64_t size = -1;
    std::string name;
    bool operator==(const Dim& o) const { return size == o.size && name == o.name; }
};

struct TensorSpec {
    std::string name;
    std::string dtype;  // numpy names: "uint8", "int64", "bool", "float32", ...
    std::vector<Dim> shape;
};

struct GraphSpec {
    std::string file;
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
};

struct RVOS_EDGE_API Manifest {
    std::filesystem::path folder;
    ModelConfig config;
    int clip_len_min = 0, clip_len_max = 0;   // clip lengths the clip graph accepts
    std::string precision;                      // of the base graphs
    std::map<std::string, GraphSpec> graphs;    // kTextEncoder, kClipModel
    std::map<std::string, std::string> files;   // file name -> sha256 hex
    // other precisions' ONNX graphs: precision -> graph name -> file
    std::map<std::string, std::map<std::string, std::string>> variants;
    // TensorRT engines: precision -> graph name -> file (empty when the folder has none), and
    // how each precision's engines run the CubeFrameAttention plugin ("" none, "jit", "aot")
    std::map<std::string, std::map<std::string, std::string>> tensorrt_engines;
    std::map<std::string, std::string> tensorrt_plugin;
    std::string tokenizer_vocab_sha256;

    // {graph name: file} of the ONNX graphs of `precision`; an Error when the folder has none.
    std::map<std::string, std::string> graph_files(const std::string& precision) const;
};

// The contract tensors for `config` and a clip-length range (Tc is a number when min == max, else "Tc").
RVOS_EDGE_API std::map<std::string, GraphSpec> expected_graphs(const ModelConfig& config, int clip_len_min,
                                                               int clip_len_max);

// Read and check folder/manifest.json; verify_files also checks that every listed file exists
// and matches its sha256. Throws Error(ErrorKind::artifacts) naming the first problem.
RVOS_EDGE_API Manifest load_manifest(const std::filesystem::path& folder, bool verify_files = true);

// sha256 (lower-case hex) of a file's bytes; Error(ErrorKind::artifacts) if it cannot be read.
RVOS_EDGE_API std::string sha256_file(const std::filesystem::path& path);
// sha256 (lower-case hex) of a buffer.
RVOS_EDGE_API std::string sha256_hex(const void* data, size_t size);

}  // namespace rvos_edge
