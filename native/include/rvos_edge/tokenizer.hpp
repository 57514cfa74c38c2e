// CLIP's byte-level BPE tokenizer, giving the ids of rvos_edge/tokenizer.py (and so of
// OpenAI's clip.tokenize). The vocabulary (bpe_simple_vocab_16e6.txt.gz) is built into the
// library and read with zlib.
//
// A text becomes ids as in Python:
// 1. Clean. Python runs ftfy.fix_text, unescapes HTML entities twice and lower-cases. Here:
//    - ftfy's HTML step (entities ending in ';', in each line until one holds a '<'), its
//      straight quotes for curly ones and its NFC normalisation;
//    - HTML entities unescaped twice as html.unescape does: numeric ones (&#38; &#x26;, with the
//      HTML5 replacements for 0, surrogates, out-of-range and the Windows-1252 range 0x80-0x9F)
//      and the named entities amp, lt, gt, quot (also in capitals), apos and nbsp;
//    - full Unicode lower-casing (ICU, root locale), as Python's str.lower().
//    NOT reproduced, so texts that need them get other ids than in Python: ftfy's mojibake
//    repair ("cafÃ©" stays as it is instead of becoming "café"), its fixes of Latin ligatures,
//    full-width characters, C1 and other control characters, terminal escapes and surrogate
//    pairs, and the other ~2,200 named HTML entities (e.g. &eacute; stays as it is).
// 2. Split into words with CLIP's pattern: <|startoftext|>, <|endoftext|>, the contractions
//    's 't 're 've 'm 'll 'd, a run of letters (\p{L}), one digit (\p{N}), a run of other
//    non-space characters (whitespace as Unicode's White_Space property).
// 3. Byte-pair encoding of each word's UTF-8 bytes; 4. vocabulary ids.
// A row is [SOS, word ids ..., EOS, 0, ...]; a text that does not fit keeps its first words.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rvos_edge/export.hpp"

namespace rvos_edge {

inline constexpr int64_t kStartOfText = 49406;
inline constexpr int64_t kEndOfText = 49407;
inline constexpr int kContextLength = 77;

struct TokenizedText {
    std::vector<int64_t> tokens;  // context_length ids
    bool truncated = false;       // words were dropped to make the text fit
};

class RVOS_EDGE_API Tokenizer {
public:
    // Reads the built-in vocabulary (about 30 ms); the process-wide instance is `shared()`.
    Tokenizer();
    static const Tokenizer& shared();

    // Word ids of a UTF-8 text, without SOS/EOS. Invalid UTF-8 is an Error(invalid_argument).
    std::vector<int64_t> encode(std::string_view text) const;

    // [SOS, at most context_length - 2 - num_prompts word ids, EOS, 0, ...] (room for the
    // language prompts the model inserts after SOS), as tokenize_for_prompts in Python.
    TokenizedText tokenize(std::string_view text, int num_prompts = 0, int context_length = kContextLength) const;

    // sha256 (hex) of the built-in bpe_simple_vocab_16e6.txt.gz, as the manifest records it.
    static const std::string& vocab_sha256();

private:
    std::vector<std::string> merge_word(std::vector<std::string> symbols) const;
    std::vector<int64_t> word_ids(const std::string& word) const;

    std::vector<std::string> byte_symbols_;           // the printable symbol of each byte value
    std::unordered_map<std::string, int64_t> ids_;    // symbol -> id
    std::unordered_map<std::string, int> ranks_;      // "left right" -> merge rank
};

// True when `text` (UTF-8) is empty or only whitespace, as `not text.strip()` in Python.
RVOS_EDGE_API bool is_blank(std::string_view text);

}  // namespace rvos_edge
