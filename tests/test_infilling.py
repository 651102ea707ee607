"""HumanEval infilling (eval/infilling.py) and bits per byte (eval/bpb.py): the offline measures of the product's task."""

from __future__ import annotations

import gzip
import lzma
import math
import random
import re
from pathlib import Path

import pytest
import torch

from lathe.core.errors import InputError
from lathe.eval.bpb import (
    COMPRESSORS,
    _windows,
    bits_per_byte,
    bpb_report,
    compressed_bits_per_byte,
    document_losses,
    model_bits_per_byte,
)
from lathe.eval.config import EvalConfig, SandboxConfig
from lathe.eval.humaneval import problems
from lathe.eval.infilling import (
    InfillingTask,
    canonical_samples,
    edit_similarity,
    exact_match,
    floor_samples,
    generate_middles,
    infilling_tasks,
    multi_line_tasks,
    previous_line,
    score_infilling,
    single_line_tasks,
)

# A CPU limit ends the floors' endless loops (a removed `i += 1`) in seconds; the wall clock leaves room for a busy machine.
CFG = EvalConfig(ks=[1], sandbox=SandboxConfig(wall_s=8.0, cpu_s=3, memory_mb=512))
# The floors' figures were measured under these tighter limits: a removed line leaves many programs looping, each
# stopped at 2 CPU seconds (a program that passes takes milliseconds), which halves the floors' run on 2 cores.
FLOOR_CFG = EvalConfig(ks=[1], sandbox=SandboxConfig(wall_s=4.0, cpu_s=2, memory_mb=512))
ID = re.compile(r"^(SingleLineInfilling|MultiLineInfilling)/(HumanEval/\d+)/L(\d+)(?:_L(\d+))?$")


@pytest.fixture(scope="module")
def single() -> list[InfillingTask]:
    return single_line_tasks()


@pytest.fixture(scope="module")
def multi() -> list[InfillingTask]:
    return multi_line_tasks()


def test_the_sets_have_the_published_sizes(single: list[InfillingTask], multi: list[InfillingTask]) -> None:
    assert len(single) == 1033
    assert len(multi) == 5815
    assert len({t.task_id for t in single}) == 1033 and len({t.task_id for t in multi}) == 5815
    assert [t.task_id for t in infilling_tasks("single-line")] == [t.task_id for t in single]
    with pytest.raises(InputError, match="single-line, multi-line"):
        infilling_tasks("random-span")


def test_every_task_follows_the_construction(single: list[InfillingTask], multi: list[InfillingTask]) -> None:
    humaneval = problems()
    for task in single + multi:
        problem = humaneval[task.problem_id]
        kind, problem_id, first, last = ID.match(task.task_id).groups()  # type: ignore[union-attr]
        assert problem_id == task.problem_id
        a, b = int(first), int(last if last is not None else first)
        lines = problem["canonical_solution"].split("\n")
        # the rules, literally
        # (where the span starts the solution, the prefix is the prompt as it is: no blank line after the docstring)
        assert task.prefix == problem["prompt"] + ("\n".join(lines[:a]) + "\n" if a > 0 else "")
        assert task.middle == "\n".join(lines[a : b + 1]) + "\n"
        assert task.suffix == "\n".join(lines[b + 1 :])
        assert task.prefix + task.middle + task.suffix == problem["prompt"] + problem["canonical_solution"]
        assert lines[a].strip() != "" and lines[b].strip() != ""  # spans start and end on non-blank lines
        if kind == "SingleLineInfilling":
            assert last is None and task.middle.count("\n") == 1 and task.middle.strip() != ""


def test_a_problem_yields_every_line_and_every_span() -> None:
    # HumanEval/0's solution: 7 non-blank lines (0-5 and 7; line 6 is blank, line 8 the empty end)
    one = {"HumanEval/0": problems()["HumanEval/0"]}
    assert [t.task_id.rsplit("/", 1)[1] for t in single_line_tasks(one)] == ["L0", "L1", "L2", "L3", "L4", "L5", "L7"]
    spans = multi_line_tasks(one)
    assert len(spans) == 7 * 8 // 2
    last = next(t for t in spans if t.task_id == "MultiLineInfilling/HumanEval/0/L5_L7")
    assert last.middle == "                    return True\n\n    return False\n"  # the blank line inside is kept
    assert last.suffix == ""
    first = single_line_tasks(one)[0]
    assert first.middle == "    for idx, elem in enumerate(numbers):\n"
    assert first.prefix == one["HumanEval/0"]["prompt"]


def test_the_measures_of_one_middle() -> None:
    assert exact_match("  return  x\n", "return x")
    assert not exact_match("return x + 1", "return x")
    assert edit_similarity("    return x\n", "return x") == 100.0  # surrounding whitespace aside
    assert edit_similarity("abc", "abd") == pytest.approx(100 * 2 * 2 / 6)  # Indel: 2 matches of 3 + 3 characters
    assert edit_similarity("", "return x") == 0.0
    assert previous_line("def f():\n    x = 1\n") == "    x = 1\n"
    assert previous_line('"""doc"""\n\n') == "\n"
    assert [s["completion"] for s in floor_samples(single_line_tasks()[:2], "previous-line")] == [
        '    """\n',  # the docstring's end
        "    for idx, elem in enumerate(numbers):\n",
    ]
    with pytest.raises(InputError, match="empty, previous-line"):
        floor_samples([], "random")


def test_copying_the_previous_line_has_the_known_edit_similarity(single: list[InfillingTask]) -> None:
    # the floor's text measures need no sandbox (its pass@1 does: test_the_floors_in_the_sandbox)
    samples = floor_samples(single, "previous-line")
    similarity = sum(edit_similarity(s["completion"], t.middle) for s, t in zip(samples, single)) / len(single)
    assert similarity == pytest.approx(26.03, abs=0.5)
    assert sum(exact_match(s["completion"], t.middle) for s, t in zip(samples, single)) == 1


def test_scoring_rejects_what_it_cannot_judge(single: list[InfillingTask]) -> None:
    with pytest.raises(InputError, match="task_id, completion, ended"):
        score_infilling([{"task_id": single[0].task_id, "completion": ""}], single, CFG)
    with pytest.raises(InputError, match="ended a boolean"):
        score_infilling([{"task_id": single[0].task_id, "completion": "", "ended": "yes"}], single, CFG)


def test_canonical_middles_of_a_multi_line_subset_pass(multi: list[InfillingTask]) -> None:
    subset = random.Random(20261207).sample(multi, 100)
    report = score_infilling(canonical_samples(subset), subset, CFG)
    assert [r["status"] for r in report["results"] if not r["passed"]] == []
    assert report["pass@1"] == 1.0 and report["exact_match"] == 1.0 and report["edit_similarity"] == 100.0
    assert report["tasks"] == 100 and report["ended"] == 1.0


@pytest.mark.integration
def test_every_canonical_single_line_middle_passes(single: list[InfillingTask]) -> None:
    report = score_infilling(canonical_samples(single), single, CFG)  # ~21 s on 2 cores
    assert [r["task_id"] for r in report["results"] if not r["passed"]] == []
    assert report["pass@1"] == 1.0 and report["samples"] == 1033


@pytest.mark.integration
def test_the_floors_in_the_sandbox(single: list[InfillingTask]) -> None:
    empty = score_infilling(floor_samples(single, "empty"), single, FLOOR_CFG)
    assert 0.025 <= empty["pass@1"] <= 0.027  # measured: 27 / 1033 = 2.61%
    assert empty["exact_match"] == 0.0 and empty["edit_similarity"] == 0.0 and empty["ended"] == 1.0
    # copying the line above: its edit similarity needs no sandbox (score_infilling's measure, task by task); its
    # pass@1 (19 / 1,033 = 1.84%, measured by benchmarks/infill_bench.py) is left to the bench: its programs that
    # loop forever cost the suite ~30 s of timeouts
    copied = [edit_similarity(s["completion"], t.middle) for s, t in zip(floor_samples(single, "previous-line"), single)]
    assert sum(copied) / len(copied) == pytest.approx(26.03, abs=0.5)


# ---- generation with a tiny random model ----

TOY = InfillingTask("Toy/0/L1", "Toy/0", "def add(a, b):\n", "    return a + b\n", "\n\nprint(add(1, 2))\n")


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_generation_fills_the_middle(hf_model: Path, mode: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt

    single = single_line_tasks()[:3]  # real prompts are longer than the micro model's 128 tokens: cut to fit
    samples = generate_middles(hf_model, [TOY, *single], mode=mode, max_new_tokens=8, batch_size=2)
    assert [s["task_id"] for s in samples] == [TOY.task_id, *(t.task_id for t in single)]
    for s in samples:
        assert isinstance(s["completion"], str) and isinstance(s["ended"], bool)
        assert s["tokens"] <= 8 and (s["ended"] or s["tokens"] == 8)
    # the toy task alone: exactly transformers' greedy continuation of the FIM prompt, laid out as in training
    tok = AutoTokenizer.from_pretrained(str(hf_model))
    vocab = tok.get_vocab()
    ids = FimIds(vocab[FIM_PREFIX], vocab[FIM_MIDDLE], vocab[FIM_SUFFIX])
    prompt = fim_prompt(
        tok.encode(TOY.prefix, add_special_tokens=False), tok.encode(TOY.suffix, add_special_tokens=False), ids, mode
    )
    model = AutoModelForCausalLM.from_pretrained(str(hf_model)).eval()
    ends = [tok.eos_token_id, vocab[FIM_PAD]]  # as the served engine, a middle also ends at <fim_pad>
    out = model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=ends, pad_token_id=tok.pad_token_id
    )[0, len(prompt) :].tolist()
    end = next((i for i, t in enumerate(out) if t in ends), None)
    want = out if end is None else out[:end]
    alone = generate_middles(hf_model, [TOY], mode=mode, max_new_tokens=8, batch_size=1)[0]
    assert alone["tokens"] == len(want) and alone["ended"] == (end is not None)
    assert alone["completion"] == tok.decode(want, skip_special_tokens=True)
    # its end probability by hand: after the prompt and the true middle, the chance of <|endoftext|> or <fim_pad>;
    # in a padded batch beside a longer task it is the same
    middle = tok.encode(TOY.middle, add_special_tokens=False)
    with torch.no_grad():
        last = model(input_ids=torch.tensor([prompt + middle])).logits[0, -1].softmax(-1)
    assert alone["end_probability"] == pytest.approx(float(last[ends].sum()), rel=1e-4)
    assert samples[0]["end_probability"] == pytest.approx(alone["end_probability"], rel=1e-4)
    assert all(0.0 <= s["end_probability"] <= 1.0 for s in samples)
    # and a random model's middles go through the same scoring
    report = score_infilling(samples[1:], single, CFG)
    assert set(report) >= {"pass@1", "exact_match", "edit_similarity", "ended"} and report["samples"] == 3
    assert report["end_probability"] == pytest.approx(sum(s["end_probability"] for s in samples[1:]) / 3)
    assert "end_probability" not in score_infilling(
        [{k: s[k] for k in ("task_id", "completion", "ended")} for s in samples[1:]], single, CFG
    )


# ---- bits per byte ----


def test_bits_per_byte_by_hand() -> None:
    # 10 bytes coded in 20 bits: 20 bits are 20 * ln 2 = 13.8629... nats; 13.8629 / ln 2 / 10 bytes = 2 bits per byte
    assert bits_per_byte(20 * math.log(2), 10) == pytest.approx(2.0)
    # "héllo" is 6 UTF-8 bytes (é is 2); a code length of 3 nats: 3 / 0.693147 / 6 = 0.72135 bits per byte
    assert bits_per_byte(3.0, len("héllo".encode())) == pytest.approx(0.72135, abs=1e-5)
    with pytest.raises(ValueError, match="at least one byte"):
        bits_per_byte(1.0, 0)


def test_compressors_see_the_same_bytes_each_document_on_its_own() -> None:
    one = "def add(a, b):\n    return a + b\n" * 20
    data = one.encode()
    assert compressed_bits_per_byte([one], "gzip-9") == 8 * len(gzip.compress(data, 9)) / len(data)
    assert compressed_bits_per_byte([data], "xz-9e") == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)
    docs = [one, "", "import os\nprint(os.getcwd())\n", "x = 'é' * 3\n"]  # the empty one has no bytes and is left out
    raw = [d.encode() for d in docs if d]
    for name in COMPRESSORS:
        per_document = 8 * sum(len(COMPRESSORS[name](b)) for b in raw) / sum(len(b) for b in raw)
        assert compressed_bits_per_byte(docs, name) == per_document
        # not the concatenation: three headers, no shared dictionary
        assert per_document > 8 * len(COMPRESSORS[name](b"".join(raw))) / len(b"".join(raw))
    with pytest.raises(InputError, match="gzip-9, xz-9e"):
        compressed_bits_per_byte(docs, "bzip2")


def test_sliding_windows_score_every_position_once() -> None:
    for n, context, stride in [(2, 8, 4), (8, 8, 4), (9, 8, 4), (30, 8, 3), (100, 16, 15)]:
        windows = _windows(n, context, stride)
        scored = [p for _, first, end in windows for p in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= context and begin < first for begin, first, end in windows)
        assert all(first - begin >= context - stride for begin, first, _ in windows[1:])


def test_a_models_bits_per_byte(hf_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_model))
    model = AutoModelForCausalLM.from_pretrained(str(hf_model)).eval()
    short = "def add(a, b):\n    return a + b\n"
    long = "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(40))  # several windows of the 128-token context
    losses = document_losses(hf_model, [short, "", long], batch_size=3)
    assert len(losses) == 2  # the empty document is left out
    # the short one fits one window: transformers' mean loss over its tokens (after <|endoftext|>) times their count
    ids = [tok.eos_token_id, *tok.encode(short, add_special_tokens=False)]
    with torch.no_grad():
        mean = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert losses[0].tokens == len(ids) - 1 and losses[0].bytes == len(short.encode())
    assert losses[0].nats == pytest.approx(mean * (len(ids) - 1), rel=1e-4)
    assert losses[1].tokens == len(tok.encode(long, add_special_tokens=False)) > 128
    assert losses[1].nats / losses[1].tokens == pytest.approx(math.log(tok.vocab_size), rel=0.2)  # random weights: ~uniform
    assert model_bits_per_byte(losses) == bits_per_byte(losses[0].nats + losses[1].nats, losses[0].bytes + losses[1].bytes)
    report = bpb_report(hf_model, [short, "", long])
    assert report["model"] == pytest.approx(model_bits_per_byte(losses), rel=1e-4)
    assert report["gzip-9"] == compressed_bits_per_byte([short, long], "gzip-9") and report["documents"] == 2
