// The native tokenizer gives the Python tokenizer's ids on the shared test strings
// (data/tokenizer_cases.json, written by fixtures.py and checked current by tests/test_native.py).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "rvos_edge/error.hpp"
#include "rvos_edge/tokenizer.hpp"

namespace {

nlohmann::json cases() {
    std::ifstream in(RVOS_EDGE_TOKENIZER_CASES);
    return nlohmann::json::parse(in);
}

}  // namespace

TEST(Tokenizer, IdsMatchPythonOnTheSharedStrings) {
    const auto& tokenizer = rvos_edge::Tokenizer::shared();
    int compared = 0;
    for (const auto& c : cases()) {
        if (c["unreproduced_ftfy"].get<bool>()) continue;  // tokenizer.hpp: not reproduced
        const std::string text = c["text"];
        const auto got = tokenizer.tokenize(text, c["num_prompts"].get<int>());
        EXPECT_EQ(got.tokens, c["tokens"].get<std::vector<int64_t>>()) << "text: " << text;
        EXPECT_EQ(got.truncated, c["truncated"].get<bool>()) << "text: " << text;
        ++compared;
    }
    EXPECT_GE(compared, 60);
}

TEST(Tokenizer, MojibakeIsNotRepaired) {
    // documented in tokenizer.hpp: "cafÃ©" keeps its mojibake (Python's ftfy makes it "café")
    const auto& tokenizer = rvos_edge::Tokenizer::shared();
    EXPECT_NE(tokenizer.tokenize("cafÃ©").tokens, tokenizer.tokenize("café").tokens);
}

TEST(Tokenizer, VocabularyIsTheShippedFile) {
    EXPECT_EQ(rvos_edge::Tokenizer::vocab_sha256(), "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a");
}

TEST(Tokenizer, InvalidUtf8AndNoRoomAreErrors) {
    const auto& tokenizer = rvos_edge::Tokenizer::shared();
    EXPECT_THROW(tokenizer.tokenize("caf\xC3"), rvos_edge::Error);
    EXPECT_THROW(tokenizer.tokenize("a dog", 76), rvos_edge::Error);
}
