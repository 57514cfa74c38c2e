"""CLIP's byte-level BPE tokenizer, in numpy (importing it does not import torch).

`tokenize` gives the same ids as OpenAI's ``clip.tokenize(texts, truncate=True)``.
A text becomes ids in four steps:

1. Clean: ``ftfy.fix_text`` (repairs mojibake such as "cafÃ©" -> "café"), HTML
   entities unescaped twice ("&amp;amp;" -> "&"), lower-cased. (CLIP also
   collapses whitespace and strips the ends; whitespace only separates words in
   step 2, so that changes no id and is left out.)
2. Pre-tokenise with CLIP's pattern into "words": a run of letters, a single
   digit, a run of other non-space characters, or one of the contractions
   's 't 're 've 'm 'll 'd. The literal strings ``<|startoftext|>`` and
   ``<|endoftext|>`` in a text are words too and become SOS/EOS ids, as in CLIP.
3. Byte-pair encoding of each word. The word's UTF-8 bytes are written as
   symbols, one printable character per byte value (so any text, emoji and CJK
   included, has a spelling and nothing is ever unknown), and the last symbol
   gets the end-of-word mark ``</w>``. Then, repeatedly, among the adjacent
   symbol pairs the one that comes first in the merge list is found and every
   occurrence of it, left to right, is fused into one symbol; this stops when
   no adjacent pair is in the list. Frequent words end as one symbol
   ("the</w>"), rare ones as a few pieces.
4. Look up each symbol's id. The vocabulary (49,408 entries) is, in this order:
   the 256 byte symbols, the same with ``</w>``, the result of each of the
   48,894 merges in list order, then ``<|startoftext|>`` (49406) and
   ``<|endoftext|>`` (49407).

A row is [SOS, word ids ..., EOS, 0, ...]. A text that does not fit keeps its
first word ids and still ends with EOS. `tokenize_for_prompts` leaves room for
the language prompts the model inserts after SOS (see DESIGN.md section 2).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import regex

from rvos_edge.errors import UserError

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894
_END_OF_WORD = "</w>"
_SPECIAL_IDS = {"<|startoftext|>": SOT_TOKEN, "<|endoftext|>": EOT_TOKEN}
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@dataclass(frozen=True)
class TokenizedText:
    """Token ids for N texts and which of them were cut short.

    tokens: int64 [N, context_length], rows [SOS, words ..., EOS, 0, ...].
    truncated: N flags, True where words were dropped to make the text fit.
    """

    tokens: np.ndarray
    truncated: list[bool]


def _byte_symbols() -> list[str]:
    """The printable character that stands for each byte value 0..255.

    Visible Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for their own
    byte; the other 68 bytes (controls, space, no-break space, soft hyphen), in
    increasing order, get U+0100, U+0101, ... so no symbol is whitespace.
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols = []
    next_free = 0x100
    for byte in range(256):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(next_free))
            next_free += 1
    return symbols


def _vocab_bytes() -> bytes:
    """The shipped gzip file, read as package data."""
    return resources.files("rvos_edge").joinpath("assets").joinpath(_VOCAB_FILE).read_bytes()


class _BytePairEncoder:
    """The merge list and vocabulary of one BPE file, with a cache of encoded words."""

    def __init__(self, merges_text: str) -> None:
        lines = merges_text.split("\n")[1 : 1 + _NUM_MERGES]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _NUM_MERGES or any(len(pair) != 2 for pair in merges):
            raise RuntimeError(f"{_VOCAB_FILE} is corrupt: expected {_NUM_MERGES} merge pairs")
        self._byte_symbols = _byte_symbols()
        base = sorted(self._byte_symbols)  # vocabulary order is code point order
        vocab = base + [s + _END_OF_WORD for s in base] + ["".join(pair) for pair in merges]
        self._ids = {symbol: index for index, symbol in enumerate(vocab)}
        if len(self._ids) + len(_SPECIAL_IDS) != VOCAB_SIZE:
            raise RuntimeError(f"{_VOCAB_FILE} is corrupt: merges repeat a symbol")
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.word_ids = functools.lru_cache(maxsize=1 << 16)(self._word_ids)

    def _merge(self, symbols: list[str]) -> list[str]:
        """Apply merges to a word's symbols until no adjacent pair has a rank."""
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda pair: self._ranks.get(pair, _NUM_MERGES))
            if best not in self._ranks:
                break
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised word (a special token maps to its own id)."""
        if word in _SPECIAL_IDS:
            return (_SPECIAL_IDS[word],)
        symbols = [self._byte_symbols[b] for b in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        return tuple(self._ids[s] for s in self._merge(symbols))


@functools.cache
def _encoder() -> _BytePairEncoder:
    return _BytePairEncoder(gzip.decompress(_vocab_bytes()).decode("utf-8"))


def _needs_repair(text: str) -> bool:
    """False for printable ASCII without '&': every step of ``ftfy.fix_text`` (mojibake, HTML
    entities, control characters, quotes, ligatures, widths, NFC) leaves such text as it is."""
    return not (text.isascii() and text.isprintable()) or "&" in text


def _clean(text: str) -> str:
    """Step 1 of the module docstring. ftfy is imported only for text it could change, so
    plain captions tokenize where ftfy is not installed (the GPU check machine)."""
    if not _needs_repair(text):
        return text.lower()
    try:
        import ftfy
    except ImportError:
        raise UserError("tokenizing text that is not plain ASCII needs the ftfy package (pip install ftfy)") from None
    return html.unescape(html.unescape(ftfy.fix_text(text))).lower()


def words_and_ids(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Each word of `text` (step 2, after cleaning) with its token ids (steps 3 and 4)."""
    encoder = _encoder()
    return [(word, encoder.word_ids(word)) for word in _WORD_PATTERN.findall(_clean(text))]


def _encode(text: str) -> list[int]:
    """Word ids of one text, without SOS/EOS."""
    return [i for _, ids in words_and_ids(text) for i in ids]


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise UserError(f"expected a string or a sequence of strings, got {type(texts).__name__}")


def tokenize_for_prompts(
    texts: str | Sequence[str], num_prompts: int, context_length: int = CONTEXT_LENGTH
) -> TokenizedText:
    """Tokenize so that `num_prompts` language prompts can go after SOS.

    Keeps at most ``context_length - 2 - num_prompts`` word ids per text, so the
    model's sequence [SOS, prompts, words, EOS] fits in `context_length`.
    Returns tokens int64 [N, context_length] (N = 1 for a single string).
    """
    texts = _as_list(texts)
    if num_prompts < 0:
        raise UserError(f"num_prompts must be >= 0, got {num_prompts}")
    max_words = context_length - 2 - num_prompts
    if max_words < 0:
        raise UserError(
            f"context_length {context_length} has no room for SOS, EOS and {num_prompts} prompts"
        )
    tokens = np.zeros((len(texts), context_length), dtype=np.int64)
    truncated = []
    for row, text in zip(tokens, texts):
        words = _encode(text)
        truncated.append(len(words) > max_words)
        ids = [SOT_TOKEN, *words[:max_words], EOT_TOKEN]
        row[: len(ids)] = ids
    return TokenizedText(tokens=tokens, truncated=truncated)


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """CLIP token ids, as ``clip.tokenize(texts, context_length, truncate=True)``.

    Returns int64 [N, context_length] (N = 1 for a single string): SOS, word ids,
    EOS, zeros; a text too long keeps its first ``context_length - 2`` word ids.
    """
    return tokenize_for_prompts(texts, num_prompts=0, context_length=context_length).tokens


@functools.cache
def vocab_sha256() -> str:
    """sha256 (hex) of the shipped ``bpe_simple_vocab_16e6.txt.gz``."""
    return hashlib.sha256(_vocab_bytes()).hexdigest()
