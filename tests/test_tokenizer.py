"""CLIP BPE tokenizer: ids checked against the vocabulary file and OpenAI's clip.tokenize.

Expected ids come either from reading the shipped .gz here (a merge on line k of
the file, k >= 1, makes the token with id 512 + k - 1; the printable ASCII
character c is byte symbol ord(c) - 33 and c + "</w>" is 256 + ord(c) - 33), or
are hard-coded values produced by OpenAI's reference `clip.tokenize`.
"""
import gzip
import hashlib
import html
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rvos_edge import tokenizer
from rvos_edge.errors import UserError
from rvos_edge.tokenizer import (
    EOT_TOKEN,
    SOT_TOKEN,
    TokenizedText,
    tokenize,
    tokenize_for_prompts,
    vocab_sha256,
)

VOCAB = resources.files("rvos_edge").joinpath("assets").joinpath("bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def merged_ids() -> dict[str, int]:
    """Token string -> id for every merge result, read straight from the file."""
    lines = gzip.decompress(VOCAB.read_bytes()).decode("utf-8").split("\n")
    assert lines[0].startswith('"bpe_simple_vocab_16e6.txt#version')
    merges = lines[1 : 1 + 48894]
    assert 49408 == 256 + 256 + len(merges) + 2
    return {"".join(line.split()): 512 + k for k, line in enumerate(merges)}


def ascii_end_id(char: str) -> int:
    """Id of a printable ASCII character that ends a word (e.g. '!</w>')."""
    return 256 + ord(char) - ord("!")


def row(ids: list[int], length: int = 77) -> list[int]:
    return [SOT_TOKEN, *ids, EOT_TOKEN] + [0] * (length - 2 - len(ids))


def test_whole_words_are_vocabulary_entries(merged_ids):
    words = "the dog jumping over the fence".split()
    expected = row([merged_ids[w + "</w>"] for w in words])
    assert tokenize("the dog jumping over the fence")[0].tolist() == expected
    # the same ids as OpenAI's clip.tokenize
    assert expected[:8] == [SOT_TOKEN, 518, 1929, 11476, 962, 518, 12679, EOT_TOKEN]


def test_punctuation_splits_off(merged_ids):
    ids = [
        ascii_end_id("a"),
        merged_ids["red</w>"],
        merged_ids["cup</w>"],
        ascii_end_id(","),
        merged_ids["on</w>"],
        merged_ids["the</w>"],
        merged_ids["left</w>"],
        ascii_end_id("!"),
    ]
    assert tokenize("a red cup, on the left!")[0].tolist() == row(ids)
    assert ids == [320, 736, 1937, 267, 525, 518, 1823, 256]  # OpenAI's ids


def test_last_merge_has_the_last_regular_id():
    assert tokenize("jekyll")[0, :3].tolist() == [SOT_TOKEN, 49405, EOT_TOKEN]


def test_contractions_and_digits_split(merged_ids):
    ids = [merged_ids["it</w>"], merged_ids["'s</w>"], ascii_end_id("4"), ascii_end_id("2")]
    assert tokenize("it's 42")[0].tolist() == row(ids)


@pytest.mark.parametrize(
    "text, ids",
    [  # ids from OpenAI's clip.tokenize
        ("café", [15304]),
        ("naïve", [1097, 35689, 563]),
        ("😀", [7334]),
        ("狗在跳", [163, 233, 245, 37746, 101, 164, 115, 367]),
    ],
)
def test_unicode_is_encoded_as_utf8_bytes(text, ids):
    assert tokenize(text)[0].tolist() == row(ids)


def test_mojibake_is_repaired_before_encoding():
    assert tokenize("cafÃ© naÃ¯ve")[0].tolist() == row([15304, 1097, 35689, 563])


def test_whitespace_html_entities_and_case_are_normalised(merged_ids):
    ids = [merged_ids["salt</w>"], ascii_end_id("&"), merged_ids["pepper</w>"]]
    for text in ["salt & pepper", "  Salt &amp;\t\n  PEPPER  ", "salt &amp;amp; pepper"]:
        assert tokenize(text)[0].tolist() == row(ids), text


def test_entities_are_unescaped_twice_even_where_ftfy_leaves_them():
    # ftfy does not touch entities in text that contains '<'
    ids = [ascii_end_id(c) for c in "<b>&x"]
    assert tokenize("<b> &amp;amp; x")[0].tolist() == row(ids)
    assert ids == [283, 321, 285, 261, 343]  # OpenAI's ids


def test_special_token_strings_in_text_map_to_special_ids():
    # as in OpenAI's tokenizer, the literal string is the special token
    assert tokenize("<|endoftext|>")[0, :3].tolist() == [SOT_TOKEN, EOT_TOKEN, EOT_TOKEN]


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_text_is_sos_eos(text):
    assert tokenize(text)[0].tolist() == row([])


def test_shapes_and_dtype():
    single = tokenize("a dog")
    batch = tokenize(["a dog", "the fence", ""])
    assert single.shape == (1, 77) and single.dtype == np.int64
    assert batch.shape == (3, 77) and batch.dtype == np.int64
    assert batch[0].tolist() == single[0].tolist()
    assert tokenize([]).shape == (0, 77)
    assert tokenize("a dog", context_length=16).shape == (1, 16)


def test_long_text_keeps_eos_last(merged_ids):
    text = " ".join(["dog"] * 100)
    tokens = tokenize(text)[0].tolist()
    assert len(tokens) == 77
    assert tokens == [SOT_TOKEN] + [merged_ids["dog</w>"]] * 75 + [EOT_TOKEN]


@pytest.mark.parametrize("num_prompts", [0, 4, 10])
def test_prompt_aware_leaves_room_for_prompts(merged_ids, num_prompts):
    out = tokenize_for_prompts([" ".join(["dog"] * 100), "the dog"], num_prompts)
    assert isinstance(out, TokenizedText)
    assert out.tokens.shape == (2, 77) and out.tokens.dtype == np.int64
    assert out.truncated == [True, False]
    long_row = out.tokens[0].tolist()
    eos_at = 76 - num_prompts
    assert long_row == [SOT_TOKEN] + [merged_ids["dog</w>"]] * (eos_at - 1) + [EOT_TOKEN] + [0] * num_prompts
    assert out.tokens[1].tolist() == tokenize("the dog")[0].tolist()


def test_prompt_aware_truncation_boundary():
    fits = " ".join(["dog"] * 71)  # 71 words + SOS + EOS + 4 prompts = 77
    out = tokenize_for_prompts([fits, fits + " dog"], num_prompts=4)
    assert out.truncated == [False, True]
    assert out.tokens[0].tolist() == out.tokens[1].tolist()
    assert out.tokens[0, 72] == EOT_TOKEN


def test_vocab_sha256_is_the_shipped_file():
    expected = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert vocab_sha256() == hashlib.sha256(VOCAB.read_bytes()).hexdigest() == expected


@pytest.mark.parametrize("texts", [None, 3, ["a dog", 7], b"a dog"])
def test_non_text_input_is_a_user_error(texts):
    with pytest.raises(UserError):
        tokenize(texts)


@pytest.mark.parametrize("num_prompts, context_length", [(-1, 77), (76, 77), (0, 1)])
def test_no_room_is_a_user_error(num_prompts, context_length):
    with pytest.raises(UserError):
        tokenize_for_prompts("a dog", num_prompts, context_length)


def test_import_does_not_load_torch():
    code = "import sys, rvos_edge.tokenizer as t; t.tokenize('a dog'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


PLAIN = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="&"),
                max_size=60)


@settings(max_examples=300, deadline=None)
@given(text=PLAIN, entity=st.sampled_from(["", "&amp;", "&lt;b&gt;", "&amp;amp;", "&#39;"]))
def test_plain_ascii_skips_ftfy_with_the_same_ids(text, entity):
    """The fast path (no ftfy for printable ASCII without '&') against ftfy itself."""
    import ftfy
    assert ftfy.fix_text(text) == text
    spelled = text + entity              # with '&' the text takes ftfy's path, as before
    expected = html.unescape(html.unescape(ftfy.fix_text(spelled))).lower()
    assert tokenizer._clean(spelled) == expected


def test_without_ftfy_plain_text_tokenizes_and_other_text_is_one_clear_error():
    code = ("import sys; sys.modules['ftfy'] = None\n"
            "import rvos_edge.tokenizer as t\n"
            "print(t.tokenize('the red circle on the left')[0, :8].tolist())\n"
            "try:\n    t.tokenize('caf\\u00e9')\nexcept t.UserError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0] == str(tokenize("the red circle on the left")[0, :8].tolist())
    assert out[1] == "tokenizing text that is not plain ASCII needs the ftfy package (pip install ftfy)"
