"""Vocabulary, FIM and packing: pure functions, no Spark."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from lathe.core.errors import InputError
from lathe.tokenizer.config import TokenizerConfig
from lathe.tokenizer.fim import FRAME_TOKENS, SpecialIds, encode_document, fim_splits, line_pieces, line_span
from lathe.tokenizer.pack import Packer
from lathe.tokenizer.special import BASE_SPECIAL_TOKENS, EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, special_tokens
from lathe.tokenizer.vocab import load_tokenizer, new_tokenizer, save_tokenizer, train_bpe

CORPUS = [
    (Path(random.__file__).read_text()),
    (Path(np.__file__).read_text()),
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS * 3, 512, reserved_sentinels=4, min_frequency=2)


def test_vocab_size_is_rounded_to_64() -> None:
    assert TokenizerConfig(vocab_size=1000).vocab_size == 1024
    assert TokenizerConfig(vocab_size=1024).vocab_size == 1024


def test_special_tokens_have_fixed_ids_and_survive(tok) -> None:
    names = special_tokens(4)
    assert [tok.token_to_id(n) for n in names] == list(range(len(names)))
    assert names[: len(BASE_SPECIAL_TOKENS)] == BASE_SPECIAL_TOKENS and names[-1] == "<|extra_id_3|>"
    for i, name in enumerate(names):
        assert tok.decode([i], skip_special_tokens=False) == name
    # no learned merge produces a special token's spelling, and text that spells one is text
    enc = tok.encode(f"x = 1{EOS}y", add_special_tokens=False)
    assert tok.token_to_id(EOS) not in enc.ids
    assert tok.decode(enc.ids, skip_special_tokens=False) == f"x = 1{EOS}y"
    assert all(t not in tok.get_vocab() or tok.token_to_id(t) < len(names) for t in names)


def test_round_trip_is_exact_on_awkward_text(tok) -> None:
    for text in ["\t\tif x:\r\n\t\t\treturn 'é'\u00a0\f\n\n", "ünïcödé → 🚀 中文", "    " * 10 + "deep()\n", ""]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_pretokenizer_splits_digits_and_keeps_identifiers_and_indentation() -> None:
    pieces = [p for p, _ in new_tokenizer().pre_tokenizer.pre_tokenize_str("def __init__(self):\n        x = 1024\n")]
    assert "Ġ__init__" in pieces  # identifiers with underscores stay whole
    assert ["Ġ1", "0", "2", "4"] == [p for p in pieces if p.lstrip("Ġ").isdigit()]  # one digit per piece
    assert "ĠĠĠĠĠĠĠ" in pieces and "Ġx" in pieces  # indentation run, last space joins the word
    assert pieces.count("Ċ") == 2  # each newline alone


def test_saved_tokenizer_loads_in_transformers_and_checks_vocab(tok, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token == EOS and hf.pad_token_id == 1 and len(hf) == tok.get_vocab_size()
    assert hf.decode(hf("def f():\n    pass\n")["input_ids"]) == "def f():\n    pass\n"
    with pytest.raises(InputError, match=r"has 512 tokens but tokenizer.vocab_size is 1024"):
        load_tokenizer(tmp_path, 1024)
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")


IDS = SpecialIds(eos=0, prefix=2, middle=3, suffix=4)


def char_encode(text: str) -> list[int]:
    return [ord(c) + 100 for c in text]


def char_decode(ids: list[int]) -> str:
    return "".join(chr(i - 100) for i in ids)


@pytest.mark.parametrize("seed", range(20))
def test_fim_keeps_every_character_and_one_of_each_marker(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice("ab c\n()") for _ in range(rng.randrange(0, 60)))
    tokens, fim = encode_document(text, f"doc{seed}", char_encode, IDS, seed=1, rate=1.0, spm_rate=0.5)
    assert fim and tokens[-1] == IDS.eos and tokens.count(IDS.eos) == 1
    for marker in (IDS.prefix, IDS.middle, IDS.suffix):
        assert tokens.count(marker) == 1
    [cut] = fim_splits(text, f"doc{seed}", 1, 1.0, 0.5)
    assert cut.prefix + cut.middle + cut.suffix == text
    body = tokens[:-1]
    if cut.mode == "psm":
        p, s, m = body.index(IDS.prefix), body.index(IDS.suffix), body.index(IDS.middle)
        assert p < s < m
        assert char_decode(body[p + 1 : s]) + char_decode(body[m + 1 :]) + char_decode(body[s + 1 : m]) == text
    else:
        assert body[:2] == [IDS.prefix, IDS.suffix]
        m = body.index(IDS.middle)
        assert char_decode(body[m + 1 :]) + char_decode(body[2:m]) == text


def test_line_pieces_cut_after_newlines_and_keep_every_character() -> None:
    text = "".join(f"line {i}\n" for i in range(40))
    pieces = line_pieces(text, 4)
    assert "".join(pieces) == text and len(pieces) == 4
    assert all(p.endswith("\n") for p in pieces) and max(map(len, pieces)) - min(map(len, pieces)) <= len("line 10\n")
    assert line_pieces("x" * 100, 5) == ["x" * 100]  # one line: nowhere to cut
    assert line_pieces(text, 1) == [text] and line_pieces("", 3) == [""]


def test_a_long_fim_document_becomes_examples_that_each_fit_the_context() -> None:
    """Each piece's prefix, suffix, middle and end lie within ``context`` tokens, and together they are the document."""
    text = "".join(f"value_{i} = compute({i})\n" for i in range(200))  # 5,000+ characters: one token each
    context = 256
    tokens, fim = encode_document(text, "long", char_encode, IDS, seed=0, rate=1.0, spm_rate=0.5, context=context)
    assert fim
    examples, start = [], 0
    for end in (i for i, t in enumerate(tokens) if t == IDS.eos):
        examples.append(tokens[start : end + 1])
        start = end + 1
    assert start == len(tokens) and len(examples) >= len(text) // (context - FRAME_TOKENS)
    line = max(map(len, text.splitlines(keepends=True)))
    assert all(len(e) <= context + line for e in examples)  # a cut moves to the next line end: at most a line over
    assert all(e.count(m) == 1 for e in examples for m in (IDS.prefix, IDS.middle, IDS.suffix))
    pieces = [p.prefix + p.middle + p.suffix for p in fim_splits(text, "long", 0, 1.0, 0.5, len(examples)) or []]
    assert "".join(pieces) == text
    # a short document is one example, cut as without a context; a plain document is never cut
    short = "def f(x):\n    return x * 2\n"
    assert encode_document(short, "s", char_encode, IDS, 0, 1.0, 0.5, context) == encode_document(
        short, "s", char_encode, IDS, 0, 1.0, 0.5
    )
    assert encode_document(text, "p", char_encode, IDS, 0, 0.0, 0.5, context) == (char_encode(text) + [IDS.eos], False)


def test_line_middles_are_whole_lines_mostly_one() -> None:
    text = "".join(f"    x_{i} = f({i})\n" for i in range(30))
    spans = [line_span(text, random.Random(seed)) for seed in range(400)]
    middles = [text[i:j] for i, j in spans]
    assert all(text[:i] == "" or text[:i].endswith("\n") for i, _ in spans) and all(m.endswith("\n") for m in middles)
    lines = [m.count("\n") for m in middles]
    assert 0.4 < lines.count(1) / len(lines) < 0.6 and 0.15 < lines.count(2) / len(lines) < 0.35
    cuts = [fim_splits(text, str(i), 0, 1.0, 0.5, line_rate=0.5) for i in range(400)]
    whole = sum(c[0].middle.endswith("\n") and (c[0].prefix == "" or c[0].prefix.endswith("\n")) for c in cuts if c)
    assert 0.45 < whole / 400 < 0.7  # half are line middles; a random cut is whole lines now and then
    assert fim_splits(text, "a", 0, 1.0, 0.5) == fim_splits(text, "a", 0, 1.0, 0.5, line_rate=0.0)


def test_fim_is_deterministic_per_id_and_follows_the_rate() -> None:
    text = "def f(x):\n    return x * 2\n"
    assert encode_document(text, "a", char_encode, IDS, 0, 0.5, 0.5) == encode_document(text, "a", char_encode, IDS, 0, 0.5, 0.5)
    assert encode_document(text, "a", char_encode, IDS, 0, 0.0, 0.5) == (char_encode(text) + [IDS.eos], False)
    share = sum(fim_splits(text, str(i), 0, 0.3, 0.5) is not None for i in range(2000)) / 2000
    assert 0.25 < share < 0.35
    modes = [fim_splits(text, str(i), 0, 1.0, 0.5)[0].mode for i in range(2000)]
    assert 0.45 < modes.count("spm") / 2000 < 0.55


def test_special_ids_from_vocab_reports_missing() -> None:
    vocab = {EOS: 0, FIM_PREFIX: 2, FIM_MIDDLE: 3}
    with pytest.raises(ValueError, match="fim_suffix"):
        SpecialIds.from_vocab(vocab.get)
    assert SpecialIds.from_vocab({**vocab, FIM_SUFFIX: 4}.get) == IDS


def test_packing_keeps_every_token() -> None:
    rng = random.Random(0)
    docs = [[rng.randrange(5, 500) for _ in range(rng.randrange(1, 40))] for _ in range(50)]
    packer = Packer(seq_len=16, pad_id=1)
    samples = [s for d in docs for s in packer.add(d)] + list(packer.finish())
    assert all(s.shape == (16,) and s.dtype == np.uint16 for s in samples)
    flat = np.concatenate(samples).tolist()
    stream = [t for d in docs for t in d]
    assert flat[: len(stream)] == stream and flat[len(stream) :] == [1] * packer.padding
    assert packer.tokens == len(stream) and packer.padding < 16
