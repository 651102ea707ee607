"""Smaller served variants, piece by piece: the int8 checkpoint, greedy agreement, the packaged variants, the
distillation loss. The stages end to end (quantize, distill, their gates, package, canary) are in test_training.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lathe.core.errors import InputError
from lathe.core.quant import INT8_WEIGHTS, bytes_on_disk, load_causal_lm, quantization_of, write_int8
from lathe.serving.config import ServeConfig
from lathe.serving.package import build_repositories, check_repository, parse_model_config
from lathe.serving.quantize import greedy_tokens, token_agreement
from lathe.training.distill.loss import DistillKL, DistillLM, kl_per_token, predicting

# A fixed prompt set: code of several shapes, as an editor sends it.
PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\n",
    "class Heap:\n    def push(self, item):\n        ",
    "for i in range(10):\n",
    "# sort the list in place\n",
    "return [x for x in ",
    "while True:\n    line = ",
    "def main():\n    args = ",
]


def test_int8_checkpoint_is_smaller_loads_quantised_and_stays_close(hf_model: Path, int8_model: Path) -> None:
    assert quantization_of(int8_model) == "int8" and quantization_of(hf_model) == "none"
    assert (int8_model / INT8_WEIGHTS).is_file() and not list(int8_model.glob("*.safetensors"))
    assert (int8_model / "tokenizer.json").read_bytes() == (hf_model / "tokenizer.json").read_bytes()
    # the Linear weights are a quarter of their fp32 bytes; the (tied) embedding stays fp32
    assert bytes_on_disk(int8_model) < 0.75 * bytes_on_disk(hf_model)
    fp32, int8 = load_causal_lm(hf_model), load_causal_lm(int8_model)
    assert isinstance(int8.model.layers[0].self_attn.q_proj, torch.ao.nn.quantized.dynamic.Linear)
    ids = torch.randint(0, fp32.config.vocab_size, (2, 24))
    with torch.inference_mode():
        a, b = fp32(ids).logits, int8(ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # close, not equal: int8 rounding
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="already quantised"):
        write_int8(int8_model, int8_model.parent / "again")
    with pytest.raises(ValueError, match="serve it on CPU instances"):
        load_causal_lm(int8_model, "cuda:0")


def test_token_agreement_counts_positions_prefixes_and_whole_completions() -> None:
    figures = token_agreement([[1, 2, 3, 4], [5, 6], [7]], [[1, 2, 9, 4], [5, 6], [7, 8]])
    # 8 positions (the longer of each pair): 3 + 2 + 1 agree; before the first difference 2 + 2 + 1; 1 of 3 identical
    assert figures == {
        "token_agreement": pytest.approx(6 / 8),
        "prefix_agreement": pytest.approx(5 / 8),
        "exact_match": pytest.approx(1 / 3),
    }


def test_int8_greedy_completions_agree_with_fp32_on_most_tokens_of_a_fixed_prompt_set(hf_model: Path, int8_model: Path) -> None:
    fp32 = greedy_tokens(hf_model, PROMPTS, 24)
    int8 = greedy_tokens(int8_model, PROMPTS, 24)
    assert all(fp32) and all(int8)
    figures = token_agreement(fp32, int8)
    assert figures["token_agreement"] > 0.75 and figures["exact_match"] >= 0.5, figures


def test_package_writes_the_variants_beside_the_model(hf_model: Path, int8_model: Path, tmp_path: Path) -> None:
    cfg = ServeConfig(quantization="fp8", instance_kind="gpu")
    roots = build_repositories(hf_model, 3, tmp_path, cfg, {"int8": (int8_model, 4), "distill": (hf_model, 5)})
    assert sorted(p.name for p in roots["python"].iterdir()) == ["lathe-code", "lathe-code-distill", "lathe-code-int8"]
    int8 = parse_model_config(roots["python"] / "lathe-code-int8" / "config.pbtxt")
    assert int8.name == "lathe-code-int8" and list(int8.version_policy.specific.versions) == [4]
    # int8 kernels are CPU kernels: its instances stay on CPUs while the fp32 model's go to the GPU
    assert int8.instance_group[0].kind == int8.instance_group[0].KIND_CPU
    assert int8.parameters["torch_threads"].string_value == "1"  # `auto` for int8: one intra-op thread (measured faster)
    main = parse_model_config(roots["python"] / "lathe-code" / "config.pbtxt")
    assert main.instance_group[0].kind == main.instance_group[0].KIND_GPU and main.parameters["torch_threads"].string_value == "0"
    assert (roots["python"] / "lathe-code-int8" / "4" / "lathe_quant.py").is_file()
    # fp8 is vLLM's: the same checkpoint, quantised on the GPU as it loads
    args = json.loads((roots["vllm"] / "lathe-code-fp8" / "3" / "model.json").read_text())
    assert args["quantization"] == "fp8" and args["model"] == "/models/vllm/lathe-code-fp8/3/hf_model"
    assert "quantization" not in json.loads((roots["vllm"] / "lathe-code" / "3" / "model.json").read_text())
    (roots["vllm"] / "lathe-code-fp8" / "3" / "model.json").write_text(json.dumps({**args, "quantization": "int3"}))
    with pytest.raises(InputError, match="quantization 'int3' is not one lathe asks vLLM for"):
        check_repository(roots["vllm"], "lathe-code-fp8", 3)
    with pytest.raises(InputError, match=r"variant\(s\) \['distilled student'\] are not ones lathe serves \(int8, distill\)"):
        build_repositories(hf_model, 3, tmp_path / "bad", cfg, {"distilled student": (hf_model, 5)})
    (roots["python"] / "lathe-code-int8" / "4" / "hf_model" / INT8_WEIGHTS).unlink()
    with pytest.raises(InputError, match="lacks hf_model's weights"):
        check_repository(roots["python"], "lathe-code-int8", 4)


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher_T || student_T) summed over the kept positions, written out position by position: the sum over the
    vocabulary of p * (log p - log q), p the teacher's and q the student's softmax of logits / T (no F.kl_div)."""
    total = torch.zeros((), dtype=torch.float64)
    for b, t in mask.nonzero().tolist():
        log_p = torch.log_softmax(teacher[b, t].double() / temperature, -1)
        log_q = torch.log_softmax(student[b, t].double() / temperature, -1)
        total = total + (log_p.exp() * (log_p - log_q)).sum()
    return total


def test_kl_per_token_is_the_teachers_kl_to_the_student_at_the_temperature() -> None:
    import math

    # teacher (3/4, 1/4) at T = 2 (logits 2 ln 3 and 0), student uniform; a second position that the mask leaves out
    teacher = torch.tensor([[[2 * math.log(3.0), 0.0], [5.0, -5.0]]])
    student = torch.tensor([[[0.0, 0.0], [-5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    by_hand = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(teacher || student) = 0.1308...
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(student || teacher) = 0.1438...: not it
    assert float(kl_per_token(student, teacher, mask, temperature=2.0)) == pytest.approx(by_hand, abs=1e-6)
    assert float(reference_kl(student, teacher, mask, 2.0)) == pytest.approx(by_hand, abs=1e-7)  # float32 logits
    assert abs(by_hand - reverse) > 0.01
    # at T = 1 the teacher is (9/10, 1/10)
    at_one = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert float(kl_per_token(student, teacher, mask)) == pytest.approx(at_one, abs=1e-6)
    # several positions and a larger vocabulary: the sum over the kept positions
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 5, 7) * 3, torch.randn(2, 5, 7) * 3
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    for temperature in (1.0, 2.0, 0.5):
        assert float(kl_per_token(student, teacher, mask, temperature)) == pytest.approx(
            float(reference_kl(student, teacher, mask, temperature)), rel=1e-5
        )


def test_kl_is_zero_for_the_teachers_own_logits_and_the_loss_mixes_kl_and_cross_entropy() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
    )
    student, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (2, 16))
    labels = ids.clone()
    labels[1, 10:] = -100  # padding: never a target
    mask = predicting(labels)
    assert mask.sum() == 15 + 9 and not mask[:, -1].any()
    logits = teacher(input_ids=ids).logits
    assert kl_per_token(logits, logits, mask).abs() < 1e-5 and kl_per_token(student(input_ids=ids).logits, logits, mask) > 0

    batch = {"input_ids": ids, "labels": labels}
    only_ce = DistillLM(student, teacher, 16, temperature=2.0, kl_weight=0.0, ce_weight=1.0)
    out = only_ce.forward(batch)
    assert torch.allclose(only_ce.loss(out, batch), out["loss"])
    assert "teacher" not in dict(only_ce.named_modules()) and not any("_teacher" in k for k in only_ce.state_dict())
    only_kl = DistillLM(student, teacher, 16, temperature=2.0, kl_weight=1.0, ce_weight=0.0)
    out = only_kl.forward(batch)
    expected = 4.0 * reference_kl(out["logits"].detach(), logits.detach(), mask, 2.0) / mask.sum()  # T^2 x KL per token
    assert float(only_kl.loss(out, batch).detach()) == pytest.approx(float(expected), abs=1e-6)  # float32 sums
    only_kl.loss(out, batch).backward()
    assert student.model.layers[0].mlp.up_proj.weight.grad is not None and teacher.model.layers[0].mlp.up_proj.weight.grad is None

    # validation: the metric reads the teacher's logits the evaluation batch carries, per predicted token
    metric = DistillKL()
    with torch.no_grad():
        eval_batch = {"input_ids": ids, "labels": labels.clone()}
        student_logits = only_kl.eval_forward(eval_batch)
        metric.update(eval_batch, student_logits, only_kl.labels)
    assert float(metric.compute()) == pytest.approx(
        float(reference_kl(student_logits, logits.detach(), mask) / mask.sum()), rel=1e-4
    )
