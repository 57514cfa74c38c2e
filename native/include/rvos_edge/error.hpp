// rvos_edge::Error: every failure of the library, with one line saying what is wrong and what to do.
#pragma once

#include <stdexcept>
#include <string>

#include "rvos_edge/export.hpp"

namespace rvos_edge {

// What kind of failure: the C API turns each into its status code (rvos_edge.h).
enum class ErrorKind {
    invalid_argument,  // bad input from the caller: an empty expression, a frame that is not H x W x 3 uint8
    artifacts,         // an artifact folder that cannot be used: manifest, sha256, ONNX files
    backend,           // the inference engine failed or is not available here
};

class RVOS_EDGE_API Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const noexcept { return kind_; }

private:
    ErrorKind kind_;
};

}  // namespace rvos_edge
