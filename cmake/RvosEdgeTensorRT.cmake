# TensorRT 10.x and the CUDA runtime, for the TensorRT backend: RVOS_EDGE_WITH_TENSORRT and the
# imported target rvos_edge::nvinfer. Where either is missing the backend is skipped with a message.
set(RVOS_EDGE_WITH_TENSORRT OFF)
find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS "${TensorRT_ROOT}/include" PATH_SUFFIXES x86_64-linux-gnu aarch64-linux-gnu)
find_library(TensorRT_LIBRARY nvinfer HINTS "${TensorRT_ROOT}/lib" "${TensorRT_ROOT}/lib64")
find_package(CUDAToolkit QUIET)
if(TensorRT_INCLUDE_DIR AND TensorRT_LIBRARY AND CUDAToolkit_FOUND)
    set(RVOS_EDGE_WITH_TENSORRT ON)
    message(STATUS "TensorRT: ${TensorRT_INCLUDE_DIR}, ${TensorRT_LIBRARY}; the TensorRT backend is built")
    add_library(rvos_edge::nvinfer SHARED IMPORTED)
    set_target_properties(rvos_edge::nvinfer PROPERTIES
        IMPORTED_LOCATION "${TensorRT_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
else()
    message(STATUS "TensorRT or CUDA not found (give -DTensorRT_ROOT=<install>): "
                   "the TensorRT backend is skipped, ONNX Runtime is the only backend")
endif()
