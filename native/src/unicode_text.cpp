#include "unicode_text.hpp"

#include <array>
#include <map>
#include <utility>

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

#include "rvos_edge/error.hpp"

namespace rvos_edge::unicode_text {
namespace {

std::u32string decode(std::string_view utf8) {
    std::u32string out;
    out.reserve(utf8.size());
    const auto* s = reinterpret_cast<const uint8_t*>(utf8.data());
    const auto length = static_cast<int32_t>(utf8.size());
    for (int32_t i = 0; i < length;) {
        UChar32 c;
        U8_NEXT(s, i, length, c);
        if (c < 0) throw Error(ErrorKind::invalid_argument, "the expression is not valid UTF-8 text");
        out.push_back(static_cast<char32_t>(c));
    }
    return out;
}

std::string encode(std::u32string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char32_t c : text) {
        std::array<uint8_t, U8_MAX_LENGTH> buffer{};
        int32_t n = 0;
        U8_APPEND_UNSAFE(buffer.data(), n, static_cast<UChar32>(c));  // c is a valid code point (decode checked)
        out.append(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(n));
    }
    return out;
}

std::u32string to_u32(const icu::UnicodeString& s) {
    std::string utf8;
    s.toUTF8String(utf8);
    return decode(utf8);
}

icu::UnicodeString to_icu(std::u32string_view s) {
    const std::string utf8 = encode(s);
    return icu::UnicodeString::fromUTF8(icu::StringPiece(utf8.data(), static_cast<int32_t>(utf8.size())));
}

std::u32string nfc(std::u32string_view text) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) throw Error(ErrorKind::backend, "ICU has no NFC normaliser data");
    icu::UnicodeString out = normalizer->normalize(to_icu(text), status);
    if (U_FAILURE(status)) throw Error(ErrorKind::invalid_argument, "the expression cannot be NFC-normalised");
    return to_u32(out);
}

// ftfy's uncurl_quotes: the curly single and double quotes become ' and ".
std::u32string uncurl_quotes(std::u32string text) {
    for (char32_t& c : text) {
        if (c == U'\u2018' || c == U'\u2019' || c == U'\u201A' || c == U'\u201B') c = U'\'';
        if (c == U'\u201C' || c == U'\u201D' || c == U'\u201E' || c == U'\u201F') c = U'"';
    }
    return text;
}

// Python's html._replace_charref for a numeric reference.
std::u32string numeric_reference(char32_t num, bool overflow) {
    static const std::map<char32_t, char32_t> invalid_charrefs = {
        {0x00, 0xFFFD}, {0x0D, 0x0D}, {0x80, 0x20AC}, {0x81, 0x81}, {0x82, 0x201A}, {0x83, 0x0192},
        {0x84, 0x201E}, {0x85, 0x2026}, {0x86, 0x2020}, {0x87, 0x2021}, {0x88, 0x02C6}, {0x89, 0x2030},
        {0x8A, 0x0160}, {0x8B, 0x2039}, {0x8C, 0x0152}, {0x8D, 0x8D}, {0x8E, 0x017D}, {0x8F, 0x8F},
        {0x90, 0x90}, {0x91, 0x2018}, {0x92, 0x2019}, {0x93, 0x201C}, {0x94, 0x201D}, {0x95, 0x2022},
        {0x96, 0x2013}, {0x97, 0x2014}, {0x98, 0x02DC}, {0x99, 0x2122}, {0x9A, 0x0161}, {0x9B, 0x203A},
        {0x9C, 0x0153}, {0x9D, 0x9D}, {0x9E, 0x017E}, {0x9F, 0x0178}};
    if (!overflow) {
        if (auto it = invalid_charrefs.find(num); it != invalid_charrefs.end()) return {it->second};
    }
    if (overflow || (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return {U'\uFFFD'};
    const bool invalid = (num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) ||
                         (num >= 0x7F && num <= 0x9F) || (num >= 0xFDD0 && num <= 0xFDEF) ||
                         (num & 0xFFFE) == 0xFFFE;
    if (invalid) return {};
    return {num};
}

// The named entities reproduced (tokenizer.hpp), as Python's html.entities.html5 has them.
const std::map<std::u32string, char32_t> with_semicolon = {
    {U"amp;", U'&'}, {U"AMP;", U'&'}, {U"lt;", U'<'}, {U"LT;", U'<'}, {U"gt;", U'>'}, {U"GT;", U'>'},
    {U"quot;", U'"'}, {U"QUOT;", U'"'}, {U"apos;", U'\''}, {U"nbsp;", U'\u00A0'}};
const std::map<std::u32string, char32_t> without_semicolon = {
    {U"amp", U'&'}, {U"AMP", U'&'}, {U"lt", U'<'}, {U"LT", U'<'}, {U"gt", U'>'}, {U"GT", U'>'},
    {U"quot", U'"'}, {U"QUOT", U'"'}, {U"nbsp", U'\u00A0'}};

bool is_digit(char32_t c, bool hex) {
    return (c >= U'0' && c <= U'9') || (hex && ((c >= U'a' && c <= U'f') || (c >= U'A' && c <= U'F')));
}

// One pass of Python's html.unescape over `text`, for numeric references and the named
// entities below (the others are left as they are, see tokenizer.hpp).
std::u32string unescape_html(std::u32string_view text) {
    std::u32string out;
    size_t i = 0;
    while (i < text.size()) {
        if (text[i] != U'&') {
            out.push_back(text[i++]);
            continue;
        }
        size_t j = i + 1;
        if (j < text.size() && text[j] == U'#') {
            const bool hex = j + 1 < text.size() && (text[j + 1] == U'x' || text[j + 1] == U'X');
            size_t k = j + (hex ? 2 : 1);
            const size_t digits_at = k;
            char32_t num = 0;
            bool overflow = false;
            while (k < text.size() && is_digit(text[k], hex)) {
                const char32_t c = text[k];
                const char32_t d = c <= U'9' ? c - U'0' : (c | 0x20) - U'a' + 10;
                if (num > 0x10FFFF) overflow = true;
                else num = num * (hex ? 16 : 10) + d;
                ++k;
            }
            if (k == digits_at) {  // "&#" without digits: not a reference
                out.push_back(text[i++]);
                continue;
            }
            if (k < text.size() && text[k] == U';') ++k;
            out += numeric_reference(num, overflow || num > 0x10FFFF);
            i = k;
            continue;
        }
        // a name: up to 32 characters other than \t \n \f space < & # ;, then an optional ';'
        size_t k = j;
        while (k < text.size() && k - j < 32 && text[k] != U'\t' && text[k] != U'\n' && text[k] != U'\f' &&
               text[k] != U' ' && text[k] != U'<' && text[k] != U'&' && text[k] != U'#' && text[k] != U';')
            ++k;
        if (k == j) {
            out.push_back(text[i++]);
            continue;
        }
        if (k < text.size() && text[k] == U';') ++k;
        const std::u32string name(text.substr(j, k - j));
        const auto exact = with_semicolon.count(name) ? with_semicolon.find(name) : without_semicolon.find(name);
        if (exact != without_semicolon.end()) {
            out.push_back(exact->second);
            i = k;
            continue;
        }
        // Python: the longest prefix (of at least 2 characters, shorter than the name) that is
        // an entity without ';' is replaced, the rest kept.
        bool replaced = false;
        for (size_t x = name.size() - 1; x > 1 && !replaced; --x) {
            if (auto it = without_semicolon.find(name.substr(0, x)); it != without_semicolon.end()) {
                out.push_back(it->second);
                out += name.substr(x);
                replaced = true;
            }
        }
        if (!replaced) {
            out.push_back(U'&');
            out += name;
        }
        i = k;
    }
    return out;
}

bool is_alnum_ascii(char32_t c) {
    return (c >= U'0' && c <= U'9') || (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z');
}

// ftfy's unescape_html on one segment: "&" "#"? [0-9A-Za-z]{1,24} ";" is replaced when it is a
// named entity (of those reproduced) or a numeric reference that html.unescape decodes whole.
std::u32string ftfy_unescape_segment(std::u32string_view text) {
    std::u32string out;
    size_t i = 0;
    while (i < text.size()) {
        size_t j = i + 1;
        if (text[i] == U'&' && j < text.size() && text[j] == U'#') ++j;
        size_t k = j;
        while (text[i] == U'&' && k < text.size() && k - j < 24 && is_alnum_ascii(text[k])) ++k;
        if (text[i] != U'&' || k == j || k >= text.size() || text[k] != U';') {
            out.push_back(text[i++]);
            continue;
        }
        const std::u32string_view entity = text.substr(i, k + 1 - i);
        std::u32string replacement(entity);
        if (entity[1] != U'#') {
            if (auto it = with_semicolon.find(std::u32string(entity.substr(1))); it != with_semicolon.end())
                replacement = std::u32string(1, it->second);
        } else if (std::u32string decoded = unescape_html(entity); decoded.find(U';') == std::u32string::npos) {
            replacement = decoded;
        }
        out += replacement;
        i = k + 1;
    }
    return out;
}

// ftfy.fix_text's HTML step: segments end after each line break; entities are unescaped in each
// segment until one holds a '<' (from then on, in no later segment either).
std::u32string ftfy_unescape(std::u32string_view text) {
    std::u32string out;
    bool unescape = true;
    for (size_t start = 0; start < text.size();) {
        const size_t newline = text.find(U'\n', start);
        const size_t end = newline == std::u32string_view::npos ? text.size() : newline + 1;
        const std::u32string_view segment = text.substr(start, end - start);
        if (segment.find(U'<') != std::u32string_view::npos) unescape = false;
        out += unescape ? ftfy_unescape_segment(segment) : std::u32string(segment);
        start = end;
    }
    return out;
}

std::u32string lower(std::u32string_view text) {
    icu::UnicodeString s = to_icu(text);
    s.toLower(icu::Locale::getRoot());
    return to_u32(s);
}

bool is_letter(char32_t c) {
    const int8_t type = u_charType(static_cast<UChar32>(c));
    return type == U_UPPERCASE_LETTER || type == U_LOWERCASE_LETTER || type == U_TITLECASE_LETTER ||
           type == U_MODIFIER_LETTER || type == U_OTHER_LETTER;
}

bool is_number(char32_t c) {
    const int8_t type = u_charType(static_cast<UChar32>(c));
    return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

bool is_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

bool starts_with(std::u32string_view text, size_t at, std::u32string_view prefix) {
    return text.substr(at, prefix.size()) == prefix;
}

}  // namespace

std::string clean(std::string_view utf8) {
    std::u32string text = nfc(uncurl_quotes(ftfy_unescape(decode(utf8))));
    text = unescape_html(unescape_html(text));
    return encode(lower(text));
}

std::vector<std::string> split_words(std::string_view cleaned) {
    // CLIP's pattern, tried in this order at each position:
    // <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
    static const std::array<std::u32string_view, 9> literals = {
        U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    const std::u32string text = decode(cleaned);
    std::vector<std::string> words;
    size_t i = 0;
    while (i < text.size()) {
        size_t end = i;
        for (std::u32string_view literal : literals) {
            if (starts_with(text, i, literal)) {
                end = i + literal.size();
                break;
            }
        }
        if (end == i) {
            if (is_letter(text[i])) {
                while (end < text.size() && is_letter(text[end])) ++end;
            } else if (is_number(text[i])) {
                end = i + 1;
            } else if (!is_space(text[i])) {
                while (end < text.size() && !is_space(text[end]) && !is_letter(text[end]) && !is_number(text[end]))
                    ++end;
            }
        }
        if (end == i) {  // whitespace separates words
            ++i;
            continue;
        }
        words.push_back(encode(std::u32string_view(text).substr(i, end - i)));
        i = end;
    }
    return words;
}

bool is_blank(std::string_view utf8) {
    for (char32_t c : decode(utf8))
        if (!is_space(c)) return false;
    return true;
}

}  // namespace rvos_edge::unicode_text
