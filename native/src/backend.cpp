#include "backends.hpp"

#include "rvos_edge/error.hpp"

namespace rvos_edge {

std::unique_ptr<Backend> open_backend(const Manifest& manifest, const BackendOptions& options) {
    if (options.backend == "ort") return make_ort_backend(manifest, options);
    if (options.backend == "trt") {
#ifdef RVOS_EDGE_WITH_TENSORRT
        return make_tensorrt_backend(manifest, options);
#else
        throw Error(ErrorKind::backend, "this librvos_edge was built without TensorRT (it was not found at build time): "
                                        "rebuild with -DTensorRT_ROOT=<TensorRT install>, or use the ort backend");
#endif
    }
    throw Error(ErrorKind::invalid_argument, "unknown backend '" + options.backend + "' (choose from ort, trt)");
}

}  // namespace rvos_edge
