// 10,000 frames through Segmenter::push on the tiny export: resident memory grows by under 10 MB.
#include <gtest/gtest.h>

#include "rvos_edge/segmenter.hpp"
#include "test_support.hpp"

TEST(Soak, TenThousandFramesKeepMemoryFlat) {
    constexpr int kFrames = 10000, kWarmup = 500;
    rvos_edge::Segmenter seg = rvos_edge::Segmenter::open(rvos_edge::testing::fixture("tiny"));
    seg.set_expression("the red circle moving right");
    std::vector<cv::Mat> frames;
    for (int i = 0; i < 16; ++i) frames.push_back(rvos_edge::testing::random_frame(24, 32, static_cast<uint64_t>(i)));
    int64_t before = 0;
    long results = 0;
    for (int i = 0; i < kFrames; ++i) {
        if (i == kWarmup) before = rvos_edge::testing::resident_bytes();
        results += static_cast<long>(seg.push(frames[static_cast<size_t>(i) % frames.size()]).size());
        if (i % 1000 == 999)  // a new expression now and then: its text features are cached, pending frames flushed
            results += static_cast<long>(
                seg.set_expression(i % 2000 == 999 ? "the blue square" : "the red circle moving right").size());
    }
    results += static_cast<long>(seg.flush().size());
    const int64_t growth = rvos_edge::testing::resident_bytes() - before;
    EXPECT_EQ(results, kFrames);
    EXPECT_LT(growth, 10 << 20) << "resident memory grew by " << growth << " bytes";
    std::cout << "soak: " << kFrames << " frames, resident memory grew by " << growth / 1024 << " KiB\n";
}
