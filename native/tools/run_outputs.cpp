#include "run_outputs.hpp"

#include <array>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <unistd.h>

namespace rvos_edge::run {
namespace {

const std::array<cv::Vec3f, 6> kColoursBgr = {cv::Vec3f(0, 255, 0),   cv::Vec3f(0, 0, 255),   cv::Vec3f(255, 0, 0),
                                              cv::Vec3f(0, 255, 255), cv::Vec3f(255, 0, 255), cv::Vec3f(255, 255, 0)};
const char* const kOverlayName = "overlay.mp4";

std::string strip_dashes(std::string s) {
    const size_t begin = s.find_first_not_of('-');
    if (begin == std::string::npos) return "";
    return s.substr(begin, s.find_last_not_of('-') - begin + 1);
}

// The text in lower case, runs of other characters as "-", at most 40 characters (Python's _slug;
// non-ASCII characters count as "other").
std::string slug(const std::string& text) {
    std::string s;
    for (unsigned char c : text) {
        const bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
        if (keep) s.push_back(static_cast<char>(std::tolower(c)));
        else if (s.empty() || s.back() != '-') s.push_back('-');
    }
    s = strip_dashes(strip_dashes(s).substr(0, 40));
    return s.empty() ? "expression" : s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The frame with mask k blended half-and-half with colour k, in float32 then truncated as numpy does.
cv::Mat overlay(const cv::Mat& frame, const std::vector<cv::Mat>& masks) {
    cv::Mat out = frame.clone();
    for (size_t k = 0; k < masks.size(); ++k) {
        const cv::Vec3f colour = kColoursBgr[k % kColoursBgr.size()];
        for (int y = 0; y < out.rows; ++y) {
            const uint8_t* m = masks[k].ptr<uint8_t>(y);
            cv::Vec3b* p = out.ptr<cv::Vec3b>(y);
            for (int x = 0; x < out.cols; ++x)
                if (m[x])
                    for (int c = 0; c < 3; ++c)
                        p[x][c] = static_cast<uint8_t>(0.5f * static_cast<float>(p[x][c]) + 0.5f * colour[c]);
        }
    }
    return out;
}

std::string frame_name(int64_t index) {
    char name[32];
    std::snprintf(name, sizeof name, "%05lld", static_cast<long long>(index));
    return name;
}

}  // namespace

std::vector<std::string> mask_folders(const std::vector<std::string>& expressions) {
    if (expressions.size() == 1) return {"masks"};
    std::vector<std::string> folders;
    for (size_t k = 0; k < expressions.size(); ++k) folders.push_back("masks/" + std::to_string(k) + "_" + slug(expressions[k]));
    return folders;
}

void prepare_out(const std::filesystem::path& out) {
    std::error_code error;
    std::filesystem::create_directories(out, error);
    std::string probe = (out / ".probe.XXXXXX").string();
    const int fd = error ? -1 : mkstemp(probe.data());
    if (fd < 0)
        throw Error(ErrorKind::invalid_argument, "cannot write to output folder " + out.string() + ": " +
                                                     (error ? error.message() : std::string(std::strerror(errno))));
    close(fd);
    unlink(probe.c_str());
}

void atomic_write(const std::filesystem::path& path, const std::string& bytes) {
    const std::filesystem::path tmp = path.parent_path() / ("." + path.filename().string() + ".partial");
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!f) throw Error(ErrorKind::invalid_argument, "cannot write " + path.string());
    }
    std::filesystem::rename(tmp, path);
}

Outputs::Outputs(std::filesystem::path out, const std::vector<std::string>& folders, double fps)
    : out_(std::move(out)), partial_(out_ / ".overlay.partial.mp4"), fps_(fps), nonempty_(folders.size(), 0),
      masks_(folders.size()) {
    for (const std::string& f : folders) {
        dirs_.push_back(out_ / f);
        std::filesystem::create_directories(dirs_.back());
    }
}

Outputs::~Outputs() {
    if (writer_.isOpened()) {
        writer_.release();
        std::error_code ignored;
        std::filesystem::remove(partial_, ignored);
    }
}

void Outputs::add_frame(int64_t index, const cv::Mat& frame) { frames_[index] = frame; }

void Outputs::add_results(size_t k, const std::vector<Result>& results) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const Result& r : results) {
        std::vector<uint8_t> png;
        if (!cv::imencode(".png", r.mask, png))
            throw Error(ErrorKind::backend, "cannot encode the mask of frame " + std::to_string(r.index) + " as PNG");
        atomic_write(dirs_[k] / (frame_name(r.index) + ".png"), std::string(png.begin(), png.end()));
        masks_[k][r.index] = r.mask;
        nonempty_[k] += cv::countNonZero(r.mask) > 0;
    }
    write_s_ += seconds_since(t0);
}

void Outputs::write_overlays() {
    const auto t0 = std::chrono::steady_clock::now();
    auto ready = [&] {
        if (!frames_.count(next_)) return false;
        for (const auto& m : masks_)
            if (!m.count(next_)) return false;
        return true;
    };
    while (ready()) {
        std::vector<cv::Mat> masks;
        for (auto& m : masks_) {
            masks.push_back(m.at(next_));
            m.erase(next_);
        }
        cv::Mat image = overlay(frames_.at(next_), masks);
        frames_.erase(next_);
        if (!writer_.isOpened()) {
            size_ = image.size();
            writer_.open(partial_.string(), cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps_, size_);
            if (!writer_.isOpened())
                throw Error(ErrorKind::backend,
                            "cannot write " + (out_ / kOverlayName).string() + ": OpenCV has no mp4v encoder here");
        }
        if (image.size() != size_) cv::resize(image, image, size_, 0, 0, cv::INTER_AREA);
        writer_.write(image);
        ++next_;
    }
    write_s_ += seconds_since(t0);
}

void Outputs::finish() {
    if (writer_.isOpened()) {
        writer_.release();
        std::filesystem::rename(partial_, out_ / kOverlayName);
    }
}

}  // namespace rvos_edge::run
