// The backends behind rvos_edge::Backend (backend.hpp); open_backend picks one.
#pragma once

#include <memory>

#include "rvos_edge/backend.hpp"

namespace rvos_edge {

std::unique_ptr<Backend> make_ort_backend(const Manifest& manifest, const BackendOptions& options);
#ifdef RVOS_EDGE_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const Manifest& manifest, const BackendOptions& options);
#endif

}  // namespace rvos_edge
