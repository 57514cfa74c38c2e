// rvos_edge.h over rvos_edge::Segmenter: exceptions become status codes and a per-thread message.
#include "rvos_edge/rvos_edge.h"

#include <memory>
#include <new>
#include <string>
#include <vector>

#include "rvos_edge/segmenter.hpp"

struct rvos_edge_segmenter {
    rvos_edge::Segmenter segmenter;
};

struct rvos_edge_results {
    std::vector<rvos_edge::Result> results;  // each mask continuous, owned here
};

namespace {

thread_local std::string last_error;

rvos_edge_status status_of(rvos_edge::ErrorKind kind) {
    switch (kind) {
        case rvos_edge::ErrorKind::invalid_argument: return RVOS_EDGE_INVALID_ARGUMENT;
        case rvos_edge::ErrorKind::artifacts: return RVOS_EDGE_BAD_ARTIFACTS;
        case rvos_edge::ErrorKind::backend: return RVOS_EDGE_BACKEND_ERROR;
    }
    return RVOS_EDGE_INTERNAL_ERROR;
}

// Run `body`, turning what it throws into a status and last_error.
template <class Body>
rvos_edge_status guarded(Body&& body) {
    try {
        body();
        last_error.clear();
        return RVOS_EDGE_OK;
    } catch (const rvos_edge::Error& e) {
        last_error = e.what();
        return status_of(e.kind());
    } catch (const std::bad_alloc&) {
        last_error = "out of memory";
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown error";
    }
    return RVOS_EDGE_INTERNAL_ERROR;
}

rvos_edge_status invalid(const char* message) {
    last_error = message;
    return RVOS_EDGE_INVALID_ARGUMENT;
}

// Results of one call as a new rvos_edge_results in *out.
template <class Call>
rvos_edge_status with_results(rvos_edge_results** out, Call&& call) {
    if (out == nullptr) return invalid("results must not be NULL");
    *out = nullptr;
    return guarded([&] {
        auto owned = std::make_unique<rvos_edge_results>();
        owned->results = call();
        *out = owned.release();
    });
}

}  // namespace

const char* rvos_edge_version(void) { return RVOS_EDGE_VERSION; }

const char* rvos_edge_last_error(void) { return last_error.c_str(); }

void rvos_edge_options_default(rvos_edge_options* options) {
    if (options == nullptr) return;
    *options = rvos_edge_options{"ort", "fp32", "cpu", 0, 0, 0};
}

rvos_edge_status rvos_edge_open(const char* artifacts_dir, const rvos_edge_options* options,
                                rvos_edge_segmenter** segmenter) {
    if (segmenter == nullptr) return invalid("segmenter must not be NULL");
    *segmenter = nullptr;
    if (artifacts_dir == nullptr) return invalid("artifacts_dir must not be NULL");
    rvos_edge_options o;
    rvos_edge_options_default(&o);
    if (options != nullptr) o = *options;
    return guarded([&] {
        rvos_edge::SegmenterOptions opts;
        opts.backend.backend = o.backend ? o.backend : "ort";
        opts.backend.precision = o.precision ? o.precision : "fp32";
        opts.backend.device = o.device ? o.device : "cpu";
        opts.backend.device_id = o.device_id;
        opts.backend.threads = o.threads;
        opts.clip_len = o.clip_len;
        *segmenter = new rvos_edge_segmenter{rvos_edge::Segmenter::open(artifacts_dir, opts)};
    });
}

void rvos_edge_close(rvos_edge_segmenter* segmenter) { delete segmenter; }

int rvos_edge_clip_len(const rvos_edge_segmenter* segmenter) {
    return segmenter ? segmenter->segmenter.clip_len() : -1;
}

rvos_edge_status rvos_edge_set_expression(rvos_edge_segmenter* segmenter, const char* expression,
                                          rvos_edge_results** results) {
    if (segmenter == nullptr || expression == nullptr) {
        if (results) *results = nullptr;
        return invalid("segmenter and expression must not be NULL");
    }
    return with_results(results, [&] { return segmenter->segmenter.set_expression(expression); });
}

rvos_edge_status rvos_edge_push(rvos_edge_segmenter* segmenter, const uint8_t* bgr, int32_t height, int32_t width,
                                size_t stride, rvos_edge_results** results) {
    if (results) *results = nullptr;
    if (segmenter == nullptr || bgr == nullptr) return invalid("segmenter and bgr must not be NULL");
    if (height < 1 || width < 1 || stride < static_cast<size_t>(width) * 3)
        return invalid("a frame needs height >= 1, width >= 1 and stride >= width * 3");
    const cv::Mat frame(height, width, CV_8UC3, const_cast<uint8_t*>(bgr), stride);
    return with_results(results, [&] { return segmenter->segmenter.push(frame); });
}

rvos_edge_status rvos_edge_flush(rvos_edge_segmenter* segmenter, rvos_edge_results** results) {
    if (segmenter == nullptr) {
        if (results) *results = nullptr;
        return invalid("segmenter must not be NULL");
    }
    return with_results(results, [&] { return segmenter->segmenter.flush(); });
}

rvos_edge_status rvos_edge_reset(rvos_edge_segmenter* segmenter) {
    if (segmenter == nullptr) return invalid("segmenter must not be NULL");
    return guarded([&] { segmenter->segmenter.reset(); });
}

size_t rvos_edge_results_count(const rvos_edge_results* results) { return results ? results->results.size() : 0; }

rvos_edge_status rvos_edge_results_get(const rvos_edge_results* results, size_t i, rvos_edge_result* result) {
    if (results == nullptr || result == nullptr) return invalid("results and result must not be NULL");
    if (i >= results->results.size()) return invalid("result index out of range");
    const rvos_edge::Result& r = results->results[i];
    *result = rvos_edge_result{r.index, r.mask.rows, r.mask.cols, r.mask.data, r.score};
    last_error.clear();
    return RVOS_EDGE_OK;
}

void rvos_edge_results_free(rvos_edge_results* results) { delete results; }
