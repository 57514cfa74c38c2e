// CLIP BPE (see tokenizer.hpp), the algorithm of rvos_edge/tokenizer.py.
#include "rvos_edge/tokenizer.hpp"

#include <algorithm>
#include <limits>

#include <zlib.h>

#include "rvos_edge/error.hpp"
#include "rvos_edge/manifest.hpp"
#include "unicode_text.hpp"
#include "vocab_data.hpp"

namespace rvos_edge {
namespace {

constexpr int kNumMerges = 49408 - 2 * 256 - 2;  // 48,894
const std::string kEndOfWord = "</w>";

std::string gunzip(std::string_view gz) {
    z_stream stream{};
    if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) throw Error(ErrorKind::backend, "zlib cannot start");
    stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
    stream.avail_in = static_cast<uInt>(gz.size());
    std::string out;
    char buffer[1 << 16];
    int status = Z_OK;
    while (status == Z_OK) {
        stream.next_out = reinterpret_cast<Bytef*>(buffer);
        stream.avail_out = sizeof buffer;
        status = inflate(&stream, Z_NO_FLUSH);
        out.append(buffer, sizeof buffer - stream.avail_out);
    }
    inflateEnd(&stream);
    if (status != Z_STREAM_END) throw Error(ErrorKind::backend, "the built-in BPE vocabulary is corrupt (gzip)");
    return out;
}

std::string utf8_of(char32_t c) {
    std::string s;
    if (c < 0x80) {
        s.push_back(static_cast<char>(c));
    } else {  // the byte symbols are all below U+0800
        s.push_back(static_cast<char>(0xC0 | (c >> 6)));
        s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    return s;
}

}  // namespace

Tokenizer::Tokenizer() {
    // Byte value -> printable symbol: visible Latin-1 characters stand for themselves, the other
    // 68 bytes get U+0100, U+0101, ... in increasing order. The vocabulary lists them in code
    // point order, then the same with </w>, then each merge's result.
    std::vector<char32_t> code_points(256);
    char32_t next_free = 0x100;
    for (int byte = 0; byte < 256; ++byte) {
        const bool visible = (byte >= 0x21 && byte < 0x7F) || (byte >= 0xA1 && byte < 0xAD) || byte >= 0xAE;
        code_points[byte] = visible ? static_cast<char32_t>(byte) : next_free++;
        byte_symbols_.push_back(utf8_of(code_points[byte]));
    }
    std::vector<char32_t> sorted = code_points;
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::string> vocab;
    for (char32_t c : sorted) vocab.push_back(utf8_of(c));
    for (char32_t c : sorted) vocab.push_back(utf8_of(c) + kEndOfWord);

    const std::string text = gunzip(vocab_gz());
    size_t line_start = text.find('\n') + 1;  // line 0 is a version header
    for (int rank = 0; rank < kNumMerges; ++rank) {
        const size_t line_end = text.find('\n', line_start);
        const std::string line = text.substr(line_start, line_end - line_start);
        const size_t space = line.find(' ');
        if (line_end == std::string::npos || space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
            throw Error(ErrorKind::backend, "the built-in BPE vocabulary is corrupt: expected 48894 merge pairs");
        ranks_.emplace(line, rank);
        vocab.push_back(line.substr(0, space) + line.substr(space + 1));
        line_start = line_end + 1;
    }
    for (size_t id = 0; id < vocab.size(); ++id) ids_.emplace(vocab[id], static_cast<int64_t>(id));
    if (ids_.size() != vocab.size()) throw Error(ErrorKind::backend, "the built-in BPE vocabulary repeats a symbol");
}

const Tokenizer& Tokenizer::shared() {
    static const Tokenizer tokenizer;
    return tokenizer;
}

const std::string& Tokenizer::vocab_sha256() {
    static const std::string digest = sha256_hex(vocab_gz().data(), vocab_gz().size());
    return digest;
}

std::vector<std::string> Tokenizer::merge_word(std::vector<std::string> symbols) const {
    // Repeatedly fuse, left to right, every occurrence of the adjacent pair with the lowest rank.
    while (symbols.size() > 1) {
        int best_rank = std::numeric_limits<int>::max();
        std::string best;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            const std::string pair = symbols[i] + ' ' + symbols[i + 1];
            auto it = ranks_.find(pair);
            if (it != ranks_.end() && it->second < best_rank) {
                best_rank = it->second;
                best = pair;
            }
        }
        if (best.empty()) break;
        std::vector<std::string> merged;
        for (size_t i = 0; i < symbols.size();) {
            if (i + 1 < symbols.size() && symbols[i] + ' ' + symbols[i + 1] == best) {
                merged.push_back(symbols[i] + symbols[i + 1]);
                i += 2;
            } else {
                merged.push_back(symbols[i++]);
            }
        }
        symbols = std::move(merged);
    }
    return symbols;
}

std::vector<int64_t> Tokenizer::word_ids(const std::string& word) const {
    if (word == "<|startoftext|>") return {kStartOfText};
    if (word == "<|endoftext|>") return {kEndOfText};
    std::vector<std::string> symbols;
    for (unsigned char byte : word) symbols.push_back(byte_symbols_[byte]);
    symbols.back() += kEndOfWord;
    std::vector<int64_t> ids;
    for (const std::string& symbol : merge_word(std::move(symbols))) ids.push_back(ids_.at(symbol));
    return ids;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
    std::vector<int64_t> ids;
    for (const std::string& word : unicode_text::split_words(unicode_text::clean(text))) {
        const std::vector<int64_t> word_id_list = word_ids(word);
        ids.insert(ids.end(), word_id_list.begin(), word_id_list.end());
    }
    return ids;
}

TokenizedText Tokenizer::tokenize(std::string_view text, int num_prompts, int context_length) const {
    if (num_prompts < 0)
        throw Error(ErrorKind::invalid_argument, "num_prompts must be >= 0, got " + std::to_string(num_prompts));
    const int max_words = context_length - 2 - num_prompts;
    if (max_words < 0)
        throw Error(ErrorKind::invalid_argument, "context_length " + std::to_string(context_length) +
                                                     " has no room for SOS, EOS and " + std::to_string(num_prompts) +
                                                     " prompts");
    const std::vector<int64_t> words = encode(text);
    TokenizedText out;
    out.truncated = static_cast<int>(words.size()) > max_words;
    out.tokens.assign(static_cast<size_t>(context_length), 0);
    out.tokens[0] = kStartOfText;
    const size_t kept = std::min(words.size(), static_cast<size_t>(max_words));
    std::copy_n(words.begin(), kept, out.tokens.begin() + 1);
    out.tokens[kept + 1] = kEndOfText;
    return out;
}

bool is_blank(std::string_view text) { return unicode_text::is_blank(text); }

}  // namespace rvos_edge
