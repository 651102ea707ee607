"""The served model's shared fixtures: one micro model, one Triton repository, one real tritonserver per test session.

Registered in conftest.py, so the serving and gateway tests share one server (it takes seconds to start).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lathe.serving.config import ServeConfig
from lathe.serving.engine import Engine
from lathe.serving.package import build_repositories
from lathe.serving.server import TritonServer

VERSION = 3
PROMPT = "def fibonacci(n):\n    "


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory) -> Path:
    """A randomly initialised micro Llama with a BPE vocabulary trained on a few stdlib files.

    Random weights make varied, non-repeating text: a good probe for streaming and stops.
    """
    from lathe.tokenizer.special import EOS, PAD
    from lathe.tokenizer.vocab import save_tokenizer, train_bpe
    from lathe.training.config import ModelConfig
    from lathe.training.model import build_model

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text() for name in ("textwrap.py", "heapq.py", "bisect.py", "fnmatch.py")]
    tok = train_bpe(texts, vocab_size=512, reserved_sentinels=4, min_frequency=2)
    out = tmp_path_factory.mktemp("served") / "hf_model"
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(d_model=64, n_layers=2, n_heads=2, max_seq_len=128),
        tok.get_vocab_size(),
        tok.token_to_id(EOS),
        tok.token_to_id(PAD),
        128,
    )
    model.model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="session")
def engine(hf_model: Path) -> Engine:
    return Engine(hf_model)


@pytest.fixture(scope="session")
def int8_model(hf_model: Path, tmp_path_factory) -> Path:
    """The micro model's int8 variant (int8 Linear layers), as `quantize` writes it."""
    from lathe.core.quant import write_int8

    return write_int8(hf_model, tmp_path_factory.mktemp("int8") / "hf_model")


def served_repositories(
    hf_model: Path, tmp_path_factory, cfg: ServeConfig, variants: dict[str, tuple[Path, int]] | None = None
) -> dict[str, Path]:
    """Both repositories of the micro model (and ``variants`` beside it), packaged with ``cfg``."""
    return build_repositories(hf_model, VERSION, tmp_path_factory.mktemp("package"), cfg, variants)


@contextmanager
def running_server(repository: dict[str, Path], tmp_path_factory) -> Iterator[TritonServer]:
    """A tritonserver on free ports serving the Python-backend repository, its log in a fresh folder."""
    with TritonServer(repository["python"], 0, 0, 0, log_file=tmp_path_factory.mktemp("log") / "triton.log") as s:
        yield s


@pytest.fixture(scope="session")
def repository(hf_model: Path, tmp_path_factory) -> dict[str, Path]:
    # the per-execute engine here; the continuous engine (the default) has its own server in test_serving.py
    return served_repositories(hf_model, tmp_path_factory, ServeConfig(max_batch_size=8, engine="batch"))


@pytest.fixture(scope="session")
def server(repository: dict[str, Path], tmp_path_factory):
    with running_server(repository, tmp_path_factory) as s:
        yield s


def reference(engine: Engine, prompt: str | list[int], max_tokens: int) -> list[int]:
    """transformers' own greedy generate: the ground truth for every served greedy completion (text, or prompt ids)."""
    ids = engine.encode(prompt) if isinstance(prompt, str) else prompt
    input_ids = torch.tensor([ids])
    out = engine.model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=engine.pad_id,
        eos_token_id=sorted(engine.end_ids),
    )
    new = out[0, len(ids) :].tolist()
    return new[: next((i for i, t in enumerate(new) if t in engine.end_ids), len(new))]  # up to the token that ended it
