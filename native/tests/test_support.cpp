#include "test_support.hpp"

#include <fstream>
#include <random>

#include <unistd.h>

namespace rvos_edge::testing {

std::filesystem::path fixture(const std::string& name) { return std::filesystem::path(RVOS_EDGE_FIXTURES) / name; }

ScratchCopy::ScratchCopy(const std::string& name)
    : path_(std::filesystem::temp_directory_path() / ("rvos_edge_test_" + std::to_string(getpid()) + "_" + name)) {
    std::filesystem::remove_all(path_);
    std::filesystem::copy(fixture(name), path_, std::filesystem::copy_options::recursive);
}

ScratchCopy::~ScratchCopy() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

cv::Mat random_frame(int height, int width, uint64_t seed) {
    cv::Mat frame(height, width, CV_8UC3);
    cv::RNG rng(seed);
    rng.fill(frame, cv::RNG::UNIFORM, 0, 256);
    return frame;
}

int64_t resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    int64_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace rvos_edge::testing
