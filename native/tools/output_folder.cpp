#include "output_folder.hpp"

#include <cerrno>
#include <cstring>
#include <random>
#include <regex>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rvos_edge/error.hpp"

namespace rvos_edge::run {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const fs::path& out, const std::string& reason) {
    throw Error(ErrorKind::invalid_argument, "cannot write to output folder " + out.string() + ": " + reason);
}

bool pid_running(long pid) { return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

void remove_leftovers(const fs::path& parent) {
    static const std::regex leftover(R"(^\..+\.(?:staging|old)-(\d+)-[0-9a-f]+$)");
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(parent, error)) {
        std::smatch found;
        const std::string name = entry.path().filename().string();
        if (std::regex_match(name, found, leftover) && !pid_running(std::stol(found[1].str())))
            fs::remove_all(entry.path(), error);
    }
}

void check_replaceable(const fs::path& out, const std::string& marker) {
    std::error_code error;
    if (!fs::exists(out, error)) return;
    if (!fs::is_directory(out, error)) fail(out, "it exists and is not a folder");
    const bool empty = fs::is_empty(out, error);
    if (error) fail(out, error.message());
    if (!empty && !fs::is_regular_file(out / marker))
        throw Error(ErrorKind::invalid_argument, "output folder " + out.string() + " holds other files (no " + marker +
                                                     " of an earlier result) and would be replaced: choose another "
                                                     "output or empty it");
}

std::string token() {
    static const char hex[] = "0123456789abcdef";
    std::random_device random;
    std::string t = std::to_string(getpid()) + "-";
    for (int i = 0; i < 8; ++i) t.push_back(hex[random() & 15]);
    return t;
}

}  // namespace

OutputFolder::OutputFolder(const fs::path& out, const std::string& marker) : out_(out) {
    const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
    std::error_code error;
    fs::create_directories(parent, error);
    if (error) fail(out, error.message());
    lock_ = parent / ("." + out.filename().string() + ".lock");
    for (;;) {
        lock_fd_ = open(lock_.c_str(), O_RDWR | O_CREAT, 0644);
        if (lock_fd_ < 0) fail(out, std::strerror(errno));
        if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
            const int flock_errno = errno;
            char holder[33] = {};
            const ssize_t n = read(lock_fd_, holder, 32);
            close(lock_fd_);
            lock_fd_ = -1;
            std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "";
            pid.erase(pid.find_last_not_of(" \n") + 1);
            if (flock_errno != EWOULDBLOCK && flock_errno != EACCES)
                throw Error(ErrorKind::invalid_argument,
                            "cannot lock output folder " + out.string() + ": " + std::strerror(flock_errno));
            throw Error(ErrorKind::invalid_argument,
                        "output folder " + out.string() + " is in use by process " + (pid.empty() ? "(unknown pid)" : pid) +
                            ", another rvos-edge writing it: wait for it to finish or choose another output");
        }
        struct stat by_path {}, by_fd {};
        if (stat(lock_.c_str(), &by_path) == 0 && fstat(lock_fd_, &by_fd) == 0 && by_path.st_ino == by_fd.st_ino) break;
        close(lock_fd_);  // the holder before us removed the file as we opened it: take the new one
    }
    const std::string pid = std::to_string(getpid()) + "\n";
    if (ftruncate(lock_fd_, 0) != 0 || write(lock_fd_, pid.data(), pid.size()) != static_cast<ssize_t>(pid.size()))
        fail(out, std::strerror(errno));
    try {
        check_replaceable(out, marker);
        remove_leftovers(parent);
        const std::string t = token();
        staging_ = parent / ("." + out.filename().string() + ".staging-" + t);
        aside_ = parent / ("." + out.filename().string() + ".old-" + t);
        if (!fs::create_directory(staging_, error)) fail(out, error ? error.message() : "the staging folder exists");
    } catch (...) {
        unlink(lock_.c_str());
        close(lock_fd_);
        throw;
    }
}

void OutputFolder::commit() {
    std::error_code error;
    if (fs::exists(out_)) fs::rename(out_, aside_, error);
    if (!error) fs::rename(staging_, out_, error);
    if (error) {
        std::error_code ignored;
        if (fs::exists(aside_)) fs::rename(aside_, out_, ignored);
        fail(out_, error.message());
    }
    fs::remove_all(aside_, error);
}

OutputFolder::~OutputFolder() {
    std::error_code ignored;
    fs::remove_all(staging_, ignored);
    unlink(lock_.c_str());
    close(lock_fd_);
}

}  // namespace rvos_edge::run
