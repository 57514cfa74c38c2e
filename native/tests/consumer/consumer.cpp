// Links the static library through the C++ API: tokenizes a text (exit 0 when the ids are right).
#include <iostream>

#include <rvos_edge/tokenizer.hpp>

int main() {
    const auto ids = rvos_edge::Tokenizer::shared().tokenize("a dog").tokens;
    std::cout << "a dog -> " << ids[0] << " " << ids[1] << " " << ids[2] << " " << ids[3] << "\n";
    return ids[0] == rvos_edge::kStartOfText && ids[3] == rvos_edge::kEndOfText ? 0 : 1;
}
