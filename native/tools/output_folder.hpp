// A run's outputs as one unit, as rvos_edge/fileio.py's output_folder: they are written to a
// staging folder beside OUT (.<name>.staging-<pid>-<token>), which replaces OUT, previous
// results and all, on commit(). Meanwhile .<name>.lock beside OUT (flock, holding our pid)
// refuses a second process asking for the same OUT. OUT may be replaced only when it does not
// exist, is an empty folder, or holds `marker` (an earlier result). Staging and set-aside
// folders left by processes that no longer run are deleted. Errors are Error(invalid_argument).
#pragma once

#include <filesystem>
#include <string>

namespace rvos_edge::run {

class OutputFolder {
public:
    OutputFolder(const std::filesystem::path& out, const std::string& marker);
    ~OutputFolder();  // without commit(): the staging folder is deleted, OUT stays as it was
    OutputFolder(const OutputFolder&) = delete;
    OutputFolder& operator=(const OutputFolder&) = delete;

    const std::filesystem::path& staging() const { return staging_; }
    void commit();  // put the staging folder in place of OUT

private:
    std::filesystem::path out_, lock_, staging_, aside_;
    int lock_fd_ = -1;
};

}  // namespace rvos_edge::run
