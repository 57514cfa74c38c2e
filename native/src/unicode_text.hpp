// The text steps of the CLIP tokenizer before byte-pair encoding (see tokenizer.hpp for what is
// and is not reproduced from Python): cleaning and splitting into words.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rvos_edge::unicode_text {

// NFC, straight quotes for curly ones, HTML entities unescaped twice, full lower-casing.
// Invalid UTF-8 is an Error(invalid_argument).
std::string clean(std::string_view utf8);

// CLIP's words of a cleaned text (UTF-8 each), in order.
std::vector<std::string> split_words(std::string_view cleaned);

// Only Unicode White_Space in `utf8` (or nothing); invalid UTF-8 is an Error(invalid_argument).
bool is_blank(std::string_view utf8);

}  // namespace rvos_edge::unicode_text
