// load_manifest refuses folders it cannot use, with a message naming the problem.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rvos_edge/error.hpp"
#include "rvos_edge/manifest.hpp"
#include "rvos_edge/segmenter.hpp"
#include "test_support.hpp"

using rvos_edge::testing::ScratchCopy;

namespace {

// The message load_manifest throws for `folder` ("" when it loads).
std::string manifest_error(const std::filesystem::path& folder) {
    try {
        rvos_edge::load_manifest(folder);
    } catch (const rvos_edge::Error& e) {
        EXPECT_EQ(e.kind(), rvos_edge::ErrorKind::artifacts);
        return e.what();
    }
    return "";
}

void edit_manifest(const std::filesystem::path& folder, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json m = nlohmann::json::parse(std::ifstream(folder / "manifest.json"));
    edit(m);
    std::ofstream(folder / "manifest.json") << m.dump(2);
}

}  // namespace

TEST(Manifest, TheExportLoads) {
    const auto m = rvos_edge::load_manifest(rvos_edge::testing::fixture("tiny"));
    EXPECT_EQ(m.config.name, "tiny");
    EXPECT_EQ(m.clip_len_min, m.config.clip_len);
    EXPECT_EQ(m.graphs.at("clip_model").file, "clip_model.onnx");
}

TEST(Manifest, WrongSha256) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    std::ofstream(dir / "text_encoder.onnx", std::ios::app) << "x";
    EXPECT_EQ(manifest_error(dir),
              "text_encoder.onnx does not match its sha256 in the manifest (changed or corrupt): re-export the folder");
}

TEST(Manifest, WrongFormatVersion) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    edit_manifest(dir, [](nlohmann::json& m) { m["format_version"] = 2; });
    EXPECT_EQ(manifest_error(dir), "artifact format version 2 but this rvos-edge reads version 1: "
                                   "re-export with this version of rvos-edge");
}

TEST(Manifest, MissingFile) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    std::filesystem::remove(dir / "clip_model.onnx");
    EXPECT_EQ(manifest_error(dir), "clip_model.onnx is listed in " + (dir / "manifest.json").string() +
                                       " but missing from the folder");
}

TEST(Manifest, MissingManifestAndFolder) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    std::filesystem::remove(dir / "manifest.json");
    EXPECT_NE(manifest_error(dir).find("no manifest.json in"), std::string::npos);
    EXPECT_NE(manifest_error(dir / "nowhere").find("is not a folder"), std::string::npos);
}

TEST(Manifest, ContractTensorsAreChecked) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    edit_manifest(dir, [](nlohmann::json& m) { m["graphs"]["clip_model"]["inputs"][0]["dtype"] = "float32"; });
    EXPECT_NE(manifest_error(dir).find("manifest graph clip_model has inputs"), std::string::npos);
}

TEST(Manifest, OtherTokenizerVocabulary) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    edit_manifest(dir, [](nlohmann::json& m) { m["tokenizer_vocab_sha256"] = std::string(64, '0'); });
    EXPECT_NE(manifest_error(dir).find("another tokenizer vocabulary"), std::string::npos);
}

TEST(Manifest, CorruptOnnxIsAnArtifactsError) {
    const ScratchCopy copy("tiny");
    const auto& dir = copy.path();
    std::ofstream(dir / "clip_model.onnx", std::ios::trunc) << "not onnx";
    edit_manifest(dir, [&](nlohmann::json& m) { m["files"]["clip_model.onnx"] = rvos_edge::sha256_file(dir / "clip_model.onnx"); });
    try {
        rvos_edge::Segmenter::open(dir);
        FAIL() << "a corrupt ONNX file opened";
    } catch (const rvos_edge::Error& e) {
        EXPECT_EQ(e.kind(), rvos_edge::ErrorKind::artifacts);
        EXPECT_NE(std::string(e.what()).find("onnxruntime cannot load"), std::string::npos) << e.what();
    }
}
