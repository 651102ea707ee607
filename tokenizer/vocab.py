"""Byte-level BPE for code: the pre-tokenizer, training, saving and loading.

The pre-tokenizer is GPT-2's idea (split text into pieces that merges never cross)
with the regex changed for code:

- identifiers: letters and underscores stay together (``__init__``, ``snake_case``), so
  merges learn whole names instead of gluing ``_`` onto punctuation;
- numbers: one digit per piece, so literals do not eat the vocabulary and ``1024`` is
  always the same four tokens (as LLaMA and StarCoder do);
- indentation: a run of spaces or tabs is one piece minus the last space, which joins the
  next word (``"   " + " return"``), so each indentation depth becomes one token;
- newlines: each ``\\n`` (or ``\\r\\n``) is its own piece, never merged with indentation,
  so line structure is visible in the token stream;
- punctuation: runs stay together (``):``, ``->``, ``==``, ``();``), common in code.

No normaliser: ``decode(encode(x)) == x`` must hold byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lathe.core.errors import InputError
from lathe.tokenizer.special import EOS, PAD, special_tokens

CODE_PATTERN = r"""'(?:s|t|re|ve|m|ll|d)(?![\p{L}\p{N}_])| ?[\p{L}_]+| ?\p{N}| ?[^\s\p{L}\p{N}_]+|[ \t]+(?!\S)|[ \t]+|\r?\n"""


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with the code pre-tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CODE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, reserved_sentinels: int, min_frequency: int) -> Tokenizer:
    """Train on ``texts``; special tokens get ids 0..n-1 and are never merged into."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens(reserved_sentinels),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Text that merely spells a special token (a file containing "<|endoftext|>") is text.
    tok.encode_special_tokens = True
    return tok


# What a tokenizer folder holds for `transformers.AutoTokenizer` (and what a model export carries).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(src: Path, dst: Path) -> list[Path]:
    """Copy a tokenizer's files byte for byte (its vocabulary hash stays the same); returns the copies."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            copied.append(Path(shutil.copy2(src / name, dst / name)))
    return copied


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> list[Path]:
    """Write tokenizer.json plus the files `transformers.AutoTokenizer.from_pretrained` needs."""
    from transformers import PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    return sorted(p for p in out_dir.iterdir() if p.suffix == ".json")


def load_tokenizer(path: Path, expected_vocab: int | None = None) -> Tokenizer:
    """Load ``path``/tokenizer.json for encoding data; check its vocabulary size if given."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"tokenizer {file} not found; run `lathe run tokenizer` first")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise InputError(f"tokenizer {file} cannot be loaded ({exc}); rerun `lathe run tokenizer --force`") from None
    if expected_vocab is not None and tok.get_vocab_size() != expected_vocab:
        raise InputError(
            f"tokenizer {file} has {tok.get_vocab_size()} tokens but tokenizer.vocab_size is {expected_vocab}; "
            "retrain it (`lathe run tokenizer --force`) or fix the config"
        )
    tok.encode_special_tokens = True
    return tok


def tokenizer_json(tok: Tokenizer) -> str:
    """The serialised tokenizer (what Spark broadcasts to workers)."""
    return json.dumps(json.loads(tok.to_str()))


def vocabulary_hash(path: Path) -> str:
    """The vocabulary's version: a content hash of ``path``/tokenizer.json (or the file itself).

    Reused vocabularies are copied byte for byte, so a model and the shards it trains on
    agree on this hash exactly when they agree on every token id.
    """
    import hashlib

    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"tokenizer {file} not found; run `lathe run tokenizer` first")
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]
