// Links the static library through the C++ API (OpenCV comes with it): tokenizes a text and
// opens a folder that does not exist (exit 0 when the ids are right and the open fails as documented).
#include <iostream>

#include <rvos_edge/segmenter.hpp>
#include <rvos_edge/tokenizer.hpp>

int main() {
    const auto ids = rvos_edge::Tokenizer::shared().tokenize("a dog").tokens;
    std::cout << "a dog -> " << ids[0] << " " << ids[1] << " " << ids[2] << " " << ids[3] << "\n";
    try {
        rvos_edge::Segmenter::open("/nonexistent-artifacts");
    } catch (const rvos_edge::Error& e) {
        std::cout << e.what() << "\n";
        return ids[0] == rvos_edge::kStartOfText && ids[3] == rvos_edge::kEndOfText &&
                       e.kind() == rvos_edge::ErrorKind::artifacts ? 0 : 1;
    }
    return 1;
}
