# ONNX Runtime: ONNXRUNTIME_INCLUDE_DIR and ONNXRUNTIME_LIBRARY, from ONNXRUNTIME_ROOT or from
# the file native/scripts/deps.sh writes (RVOS_EDGE_ORT_CMAKE); the imported target rvos_edge::onnxruntime.
if(ONNXRUNTIME_ROOT)
    find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_cxx_api.h
              PATHS "${ONNXRUNTIME_ROOT}/include" "${ONNXRUNTIME_ROOT}/include/onnxruntime" NO_DEFAULT_PATH)
    find_library(ONNXRUNTIME_LIBRARY onnxruntime PATHS "${ONNXRUNTIME_ROOT}/lib" "${ONNXRUNTIME_ROOT}/lib64"
                 NO_DEFAULT_PATH)
elseif(RVOS_EDGE_ORT_CMAKE)
    include("${RVOS_EDGE_ORT_CMAKE}")
else()
    find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_cxx_api.h PATH_SUFFIXES onnxruntime)
    find_library(ONNXRUNTIME_LIBRARY onnxruntime)
endif()
if(NOT ONNXRUNTIME_INCLUDE_DIR OR NOT ONNXRUNTIME_LIBRARY)
    message(FATAL_ERROR "ONNX Runtime not found: give -DONNXRUNTIME_ROOT=<install with include/ and lib/>, "
                        "or run native/scripts/deps.sh and give -DRVOS_EDGE_ORT_CMAKE=<the onnxruntime.cmake it writes>")
endif()
message(STATUS "ONNX Runtime: ${ONNXRUNTIME_INCLUDE_DIR}, ${ONNXRUNTIME_LIBRARY}")
add_library(rvos_edge::onnxruntime SHARED IMPORTED)
set_target_properties(rvos_edge::onnxruntime PROPERTIES
    IMPORTED_LOCATION "${ONNXRUNTIME_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRUNTIME_INCLUDE_DIR}")
get_filename_component(ONNXRUNTIME_LIBRARY_DIR "${ONNXRUNTIME_LIBRARY}" DIRECTORY)
