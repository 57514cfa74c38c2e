/* The C API of librvos_edge: referring video object segmentation from C, or from any language
 * with a C foreign-function interface (Python ctypes, Rust, Go). No C++ types cross it.
 *
 *     rvos_edge_segmenter* seg = NULL;
 *     rvos_edge_results* results = NULL;
 *     if (rvos_edge_open("artifacts/", NULL, &seg) != RVOS_EDGE_OK) {
 *         fprintf(stderr, "%s\n", rvos_edge_last_error());
 *         return 2;
 *     }
 *     rvos_edge_set_expression(seg, "the red cup on the left", &results);
 *     rvos_edge_results_free(results);
 *     while (read_frame(bgr, &height, &width)) {                     // H x W x 3 uint8 BGR
 *         rvos_edge_push(seg, bgr, height, width, width * 3, &results);
 *         for (size_t i = 0; i < rvos_edge_results_count(results); ++i) {
 *             rvos_edge_result r;
 *             rvos_edge_results_get(results, i, &r);                 // r.mask: r.height x r.width bytes
 *             use(r.index, r.mask, r.score);
 *         }
 *         rvos_edge_results_free(results);                           // frees every r.mask with it
 *     }
 *     rvos_edge_flush(seg, &results); ... rvos_edge_results_free(results);
 *     rvos_edge_close(seg);
 *
 * Behaviour is rvos_edge::Segmenter's (segmenter.hpp): clips of rvos_edge_clip_len() frames,
 * results when a clip completes, the history reset on a new expression.
 *
 * Errors: every function returning rvos_edge_status returns RVOS_EDGE_OK or an error code, and
 * then rvos_edge_last_error() gives one line saying what is wrong (per thread, valid until the
 * thread's next call into this API). On error the output arguments are left NULL.
 *
 * Ownership:
 * - A segmenter is created by rvos_edge_open and destroyed by rvos_edge_close (NULL is ignored).
 *   One segmenter must not be used by two threads at once; separate segmenters may.
 * - Every call that produces results (set_expression, push, flush) returns a new
 *   rvos_edge_results (possibly with 0 results) that the caller owns and frees with
 *   rvos_edge_results_free. The mask buffers it holds belong to it: a mask pointer from
 *   rvos_edge_results_get is valid until that results object is freed, and never after; copy
 *   the bytes to keep them. Results stay valid after later calls on the segmenter and after
 *   rvos_edge_close.
 * - Input frames are only read during the call; the caller keeps ownership.
 * - Strings returned (rvos_edge_last_error, rvos_edge_version) are owned by the library.
 */
#ifndef RVOS_EDGE_H
#define RVOS_EDGE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define RVOS_EDGE_C_API __attribute__((visibility("default")))
#else
#define RVOS_EDGE_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rvos_edge_status {
    RVOS_EDGE_OK = 0,
    RVOS_EDGE_INVALID_ARGUMENT = 1, /* bad input: NULL pointer, blank expression, bad frame size */
    RVOS_EDGE_BAD_ARTIFACTS = 2,    /* the artifact folder cannot be used (manifest, sha256, ONNX) */
    RVOS_EDGE_BACKEND_ERROR = 3,    /* the inference engine failed or is not available */
    RVOS_EDGE_INTERNAL_ERROR = 4    /* anything else (out of memory, ...) */
} rvos_edge_status;

typedef struct rvos_edge_segmenter rvos_edge_segmenter; /* opaque */
typedef struct rvos_edge_results rvos_edge_results;     /* opaque */

/* Options of rvos_edge_open; NULL, or a struct filled by rvos_edge_options_default first. */
typedef struct rvos_edge_options {
    const char* backend;   /* "ort" (default) or "trt" */
    const char* precision; /* "fp32" (default), or a variant the folder holds */
    const char* device;    /* ort: "cpu" (default), "cuda", "tensorrt"; trt: "cuda" */
    int device_id;         /* GPU index, 0 by default */
    int threads;           /* ort intra-op threads, 0: ONNX Runtime's default */
    int clip_len;          /* 0: the model's clip length */
} rvos_edge_options;

/* One frame's mask. mask: height x width bytes, row-major, 255 inside the mask, 0 outside;
 * owned by the rvos_edge_results it came from. */
typedef struct rvos_edge_result {
    int64_t index;
    int32_t height;
    int32_t width;
    const uint8_t* mask;
    double score; /* mean sigmoid probability inside the mask, 0.0 when it is empty */
} rvos_edge_result;

RVOS_EDGE_C_API const char* rvos_edge_version(void);
RVOS_EDGE_C_API const char* rvos_edge_last_error(void);
RVOS_EDGE_C_API void rvos_edge_options_default(rvos_edge_options* options);

/* Open an artifact folder (manifest and every file's sha256 checked). */
RVOS_EDGE_C_API rvos_edge_status rvos_edge_open(const char* artifacts_dir, const rvos_edge_options* options,
                                                rvos_edge_segmenter** segmenter);
RVOS_EDGE_C_API void rvos_edge_close(rvos_edge_segmenter* segmenter);

/* Frames per clip; -1 for a NULL segmenter. */
RVOS_EDGE_C_API int rvos_edge_clip_len(const rvos_edge_segmenter* segmenter);

/* expression: UTF-8. Returns the results of frames pending under the previous expression. */
RVOS_EDGE_C_API rvos_edge_status rvos_edge_set_expression(rvos_edge_segmenter* segmenter, const char* expression,
                                                          rvos_edge_results** results);
/* bgr: height rows of width x 3 bytes (B, G, R), rows `stride` bytes apart (stride >= width * 3). */
RVOS_EDGE_C_API rvos_edge_status rvos_edge_push(rvos_edge_segmenter* segmenter, const uint8_t* bgr, int32_t height,
                                                int32_t width, size_t stride, rvos_edge_results** results);
RVOS_EDGE_C_API rvos_edge_status rvos_edge_flush(rvos_edge_segmenter* segmenter, rvos_edge_results** results);
/* Drop pending frames, clear the history, restart the frame index at 0. */
RVOS_EDGE_C_API rvos_edge_status rvos_edge_reset(rvos_edge_segmenter* segmenter);

/* 0 for NULL. */
RVOS_EDGE_C_API size_t rvos_edge_results_count(const rvos_edge_results* results);
/* Result i (< count) into *result; its mask pointer is owned by `results`. */
RVOS_EDGE_C_API rvos_edge_status rvos_edge_results_get(const rvos_edge_results* results, size_t i,
                                                       rvos_edge_result* result);
/* Frees the results and their mask buffers; NULL is ignored. */
RVOS_EDGE_C_API void rvos_edge_results_free(rvos_edge_results* results);

#ifdef __cplusplus
}
#endif

#endif /* RVOS_EDGE_H */
