// load_manifest: the checks of rvos_edge/artifacts/manifest.py, with the same messages.
#include "rvos_edge/manifest.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "rvos_edge/error.hpp"
#include "rvos_edge/tokenizer.hpp"

namespace rvos_edge {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& message) { throw Error(ErrorKind::artifacts, message); }

const json& field(const json& object, const std::string& key, json::value_t type, const char* what) {
    auto it = object.find(key);
    const bool ok = it != object.end() &&
                    (it->type() == type || (type == json::value_t::number_integer &&
                                            it->type() == json::value_t::number_unsigned));
    if (!ok) fail("manifest field '" + key + "' is missing or not " + what);
    return *it;
}

int positive_int(const json& config, const char* key) {
    auto it = config.find(key);
    if (it == config.end() || !it->is_number_integer() || it->get<int64_t>() < 1)
        fail(std::string("manifest config does not parse: '") + key + "' must be an integer >= 1");
    return it->get<int>();
}

ModelConfig parse_config(const json& d) {
    ModelConfig c;
    c.name = d.value("name", std::string("custom"));
    c.image_size = positive_int(d, "image_size");
    c.patch_size = positive_int(d, "patch_size");
    c.embed_dim = positive_int(d, "embed_dim");
    c.context_length = positive_int(d, "context_length");
    c.clip_len = positive_int(d, "clip_len");
    c.vision_prompts = positive_int(d, "vision_prompts");
    c.history_prompts = positive_int(d, "history_prompts");
    if (c.image_size % c.patch_size != 0)
        fail("manifest config does not parse: image_size " + std::to_string(c.image_size) +
             " is not a multiple of patch_size " + std::to_string(c.patch_size));
    if (c.max_words() < 1) fail("manifest config does not parse: the language prompts leave no room for words");
    return c;
}

TensorSpec parse_tensor(const json& d, const std::string& where) {
    if (!d.is_object() || !d.contains("name") || !d["name"].is_string())
        fail(where + ": a tensor must be an object with a string 'name'");
    TensorSpec t;
    t.name = d["name"].get<std::string>();
    if (!d.contains("dtype") || !d["dtype"].is_string()) fail(where + ": tensor '" + t.name + "' has no dtype");
    t.dtype = d["dtype"].get<std::string>();
    if (!d.contains("shape") || !d["shape"].is_array())
        fail(where + ": tensor '" + t.name + "' needs a shape list of ints and dimension names");
    for (const json& dim : d["shape"]) {
        if (dim.is_number_integer()) t.shape.push_back({dim.get<int64_t>(), ""});
        else if (dim.is_string()) t.shape.push_back({-1, dim.get<std::string>()});
        else fail(where + ": tensor '" + t.name + "' needs a shape list of ints and dimension names");
    }
    return t;
}

GraphSpec parse_graph(const json& d, const std::string& where) {
    if (!d.is_object() || !d.contains("file") || !d["file"].is_string())
        fail(where + ": a graph must be an object with a string 'file'");
    GraphSpec g;
    g.file = d["file"].get<std::string>();
    for (const char* key : {"inputs", "outputs"}) {
        if (!d.contains(key) || !d[key].is_array()) fail(where + ": '" + key + "' must be a list of tensors");
        auto& list = std::string(key) == "inputs" ? g.inputs : g.outputs;
        for (const json& t : d[key]) list.push_back(parse_tensor(t, where + "." + key));
    }
    return g;
}

std::string describe(const std::vector<TensorSpec>& tensors) {
    std::string out = "{";
    for (const TensorSpec& t : tensors) {
        out += (out.size() > 1 ? ", " : "") + t.name + ": " + t.dtype + " [";
        for (size_t i = 0; i < t.shape.size(); ++i)
            out += (i ? ", " : "") + (t.shape[i].name.empty() ? std::to_string(t.shape[i].size) : t.shape[i].name);
        out += "]";
    }
    return out + "}";
}

bool same_tensors(std::vector<TensorSpec> a, std::vector<TensorSpec> b) {
    auto by_name = [](const TensorSpec& x, const TensorSpec& y) { return x.name < y.name; };
    std::sort(a.begin(), a.end(), by_name);
    std::sort(b.begin(), b.end(), by_name);
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape) return false;
    return true;
}

std::map<std::string, std::map<std::string, std::string>> parse_graph_files(const json& d, const std::string& where) {
    std::map<std::string, std::map<std::string, std::string>> out;
    for (auto& [precision, files] : d.items()) {
        if (!files.is_object() || files.size() != 2 || !files.contains(kTextEncoder) || !files.contains(kClipModel) ||
            !files[kTextEncoder].is_string() || !files[kClipModel].is_string())
            fail("manifest " + where + " '" + precision + "' must name a file for each of text_encoder, clip_model");
        for (const char* graph : {kTextEncoder, kClipModel}) out[precision][graph] = files[graph].get<std::string>();
    }
    return out;
}

Manifest parse(const json& d) {
    if (!d.is_object()) fail("manifest.json must hold a JSON object");
    const std::string format = d.value("format", std::string());
    if (format != kArtifactFormat)
        fail("manifest format is '" + format + "', expected '" + kArtifactFormat +
             "': not an rvos-edge artifact folder");
    auto version = d.find("format_version");
    if (version == d.end() || !version->is_number_integer() || version->get<int64_t>() != kFormatVersion)
        fail("artifact format version " + (version == d.end() ? std::string("None") : version->dump()) +
             " but this rvos-edge reads version " + std::to_string(kFormatVersion) +
             ": re-export with this version of rvos-edge");

    Manifest m;
    m.config = parse_config(field(d, "config", json::value_t::object, "dict"));
    const json& clip_len = field(d, "clip_len", json::value_t::object, "dict");
    if (!clip_len.contains("min") || !clip_len.contains("max") || !clip_len["min"].is_number_integer() ||
        !clip_len["max"].is_number_integer() || clip_len["min"].get<int64_t>() < 1 ||
        clip_len["min"].get<int64_t>() > clip_len["max"].get<int64_t>())
        fail("manifest clip_len must be {'min': a, 'max': b} with 1 <= a <= b, got " + clip_len.dump());
    m.clip_len_min = clip_len["min"].get<int>();
    m.clip_len_max = clip_len["max"].get<int>();
    m.precision = field(d, "precision", json::value_t::string, "str").get<std::string>();
    const json& graphs = field(d, "graphs", json::value_t::object, "dict");
    for (const char* name : {kTextEncoder, kClipModel}) {
        if (!graphs.contains(name)) fail(std::string("manifest has no graph ") + name);
        m.graphs[name] = parse_graph(graphs[name], std::string("graphs.") + name);
    }
    for (auto& [file, digest] : field(d, "files", json::value_t::object, "dict").items()) {
        if (!digest.is_string()) fail("manifest 'files' must map file names to sha256 hex strings");
        m.files[file] = digest.get<std::string>();
    }
    m.variants = parse_graph_files(field(d, "variants", json::value_t::object, "dict"), "variant");
    if (auto trt = d.find("tensorrt"); trt != d.end() && trt->is_object() && trt->contains("engines")) {
        for (auto& [precision, entry] : (*trt)["engines"].items()) {
            if (!entry.is_object() || !entry.contains("files"))
                fail("manifest tensorrt.engines." + precision + " is not a TensorRT engine entry (missing files)");
            auto files = parse_graph_files(json{{precision, entry["files"]}}, "tensorrt.engines");
            m.tensorrt_engines[precision] = files[precision];
            const json plugin = entry.value("plugin", json());
            m.tensorrt_plugin[precision] = plugin.is_string() ? plugin.get<std::string>() : "";
        }
    }
    m.tokenizer_vocab_sha256 = field(d, "tokenizer_vocab_sha256", json::value_t::string, "str").get<std::string>();

    // The contract: the tensors the runtime feeds and reads, and a sha256 for every graph file.
    const auto expected = expected_graphs(m.config, m.clip_len_min, m.clip_len_max);
    for (const char* name : {kTextEncoder, kClipModel}) {
        const GraphSpec& have = m.graphs[name];
        const GraphSpec& want = expected.at(name);
        for (int k = 0; k < 2; ++k) {
            const auto& h = k == 0 ? have.inputs : have.outputs;
            const auto& w = k == 0 ? want.inputs : want.outputs;
            if (!same_tensors(h, w))
                fail(std::string("manifest graph ") + name + " has " + (k == 0 ? "inputs " : "outputs ") +
                     describe(h) + ", this rvos-edge expects " + describe(w) + ": re-export with this version of rvos-edge");
        }
        if (!m.files.count(have.file)) fail("manifest names " + have.file + " but lists no sha256 for it");
    }
    for (const auto* section : {&m.variants, &m.tensorrt_engines})
        for (const auto& [precision, files] : *section)
            for (const auto& [graph, file] : files)
                if (!m.files.count(file)) fail("manifest names " + file + " but lists no sha256 for it");
    return m;
}

void verify_files(const std::filesystem::path& folder, const std::map<std::string, std::string>& files) {
    for (const auto& [name, digest] : files) {
        const std::filesystem::path relative(name);
        bool outside = relative.is_absolute();
        for (const auto& part : relative) outside = outside || part == "..";
        if (outside) fail("manifest lists '" + name + "', which is outside the artifact folder");
        const std::filesystem::path path = folder / relative;
        if (!std::filesystem::is_regular_file(path))
            fail(name + " is listed in " + (folder / kManifestName).string() + " but missing from the folder");
        if (sha256_file(path) != digest)
            fail(name + " does not match its sha256 in the manifest (changed or corrupt): re-export the folder");
    }
}

}  // namespace

std::map<std::string, GraphSpec> expected_graphs(const ModelConfig& c, int clip_len_min, int clip_len_max) {
    const Dim batch{-1, "B"};
    const Dim tc = clip_len_min == clip_len_max ? Dim{clip_len_min, ""} : Dim{-1, "Tc"};
    auto n = [](int64_t size) { return Dim{size, ""}; };
    const int64_t ce = c.embed_dim, s = c.image_size, m = c.mask_size(), mh = c.history_prompts, ctx = c.context_length;
    const std::vector<TensorSpec> text_out = {{"text_feats", "float32", {batch, n(ctx), n(ce)}},
                                              {"text_mask", "bool", {batch, n(ctx)}},
                                              {"text_global", "float32", {batch, n(ce)}}};
    GraphSpec text{std::string(kTextEncoder) + ".onnx", {{"tokens", "int64", {batch, n(ctx)}}}, text_out};
    GraphSpec clip{std::string(kClipModel) + ".onnx", {{"frames", "uint8", {batch, tc, n(s), n(s), n(3)}}}, {}};
    clip.inputs.insert(clip.inputs.end(), text_out.begin(), text_out.end());
    clip.inputs.push_back({"history", "float32", {batch, n(mh), n(ce)}});
    clip.inputs.push_back({"has_history", "float32", {batch, n(1)}});
    clip.outputs = {{"mask_logits", "float32", {batch, tc, n(m), n(m)}},
                    {"history_out", "float32", {batch, n(mh), n(ce)}}};
    return {{kTextEncoder, text}, {kClipModel, clip}};
}

std::map<std::string, std::string> Manifest::graph_files(const std::string& want) const {
    if (want == precision) return {{kTextEncoder, graphs.at(kTextEncoder).file}, {kClipModel, graphs.at(kClipModel).file}};
    auto it = variants.find(want);
    if (it == variants.end()) {
        std::string have = precision;
        for (const auto& [p, files] : variants) have += ", " + p;
        fail("no " + want + " graphs in this artifact folder (it has: " + have + "); build them with `rvos-edge build DIR --precision " + want + "`");
    }
    return it->second;
}

Manifest load_manifest(const std::filesystem::path& folder, bool verify) {
    const std::filesystem::path path = folder / kManifestName;
    if (!std::filesystem::is_directory(folder))
        fail(folder.string() + " is not a folder (an artifact folder from `rvos-edge export` is expected)");
    if (!std::filesystem::is_regular_file(path))
        fail(std::string("no ") + kManifestName + " in " + folder.string() +
             ": not an artifact folder from `rvos-edge export`");
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) fail("cannot read " + path.string());
    json d = json::parse(text.str(), nullptr, false);
    if (d.is_discarded()) fail("cannot read " + path.string() + ": not valid JSON");
    Manifest m = parse(d);
    m.folder = folder;
    const std::string& installed = Tokenizer::vocab_sha256();
    if (m.tokenizer_vocab_sha256 != installed)
        fail(path.string() + " was exported with another tokenizer vocabulary (sha256 " +
             m.tokenizer_vocab_sha256.substr(0, 12) + "..., built in " + installed.substr(0, 12) +
             "...): re-export with this version of rvos-edge");
    if (verify) verify_files(folder, m.files);
    return m;
}

}  // namespace rvos_edge
