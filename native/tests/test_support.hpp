// Shared by the C++ tests: the fixture folders (fixtures.py), scratch copies of them, frames.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <opencv2/core.hpp>

namespace rvos_edge::testing {

// RVOS_EDGE_FIXTURES/<name>: "tiny", "demo" (exports), "video.avi".
std::filesystem::path fixture(const std::string& name);

// A fresh copy of the fixture folder `name` under the system's temporary folder, deleted with this object.
class ScratchCopy {
public:
    explicit ScratchCopy(const std::string& name);
    ~ScratchCopy();
    ScratchCopy(const ScratchCopy&) = delete;
    ScratchCopy& operator=(const ScratchCopy&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// A BGR frame of random pixels, the same for the same seed.
cv::Mat random_frame(int height, int width, uint64_t seed);

// This process's resident memory in bytes (/proc/self/statm).
int64_t resident_bytes();

}  // namespace rvos_edge::testing
