"""Export an HF checkpoint into Triton model repositories.

Two repositories over the same checkpoint (and, beside it, the variants: int8, a distilled student, fp8):

- ``triton/``: the Python-backend model (serving/triton_model.py + serving/engine.py), CPU or
  GPU instances, decoupled streaming, dynamic batching. This is what `lathe serve` runs.
- ``triton-vllm/``: the GPU variant for Triton's vLLM backend (the Kubernetes `gpu` overlay).
  It cannot run here (no GPU, no vLLM wheel), so it is written and checked as files.

The version directory is the MLflow model version, so `/v2/models/<name>/versions/<v>`
names the registry entry it came from. ``config.pbtxt`` is built as a ``ModelConfig``
protobuf and printed in text format, so a misspelled field cannot get in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from lathe.core.errors import InputError
from lathe.core.models import VARIANTS
from lathe.core.quant import INT8, bytes_on_disk, quantization_of
from lathe.serving.config import ServeConfig
from lathe.serving.protocol import INPUTS, OUTPUTS, Field

HERE = Path(__file__).parent
# Architectures vLLM serves natively (the model family lathe trains is Llama).
VLLM_ARCHITECTURES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GPTBigCodeForCausalLM",
    "Starcoder2ForCausalLM",
}

# vLLM's own quantisation methods lathe configures (applied on the GPU as the fp32/bf16 weights load).
VLLM_QUANTIZATION = ("fp8",)

# Files copied into each version directory of the Python-backend model, under the names model.py imports.
MODEL_FILES = {
    HERE / "triton_model.py": "model.py",
    HERE / "engine.py": "lathe_engine.py",
    HERE / "protocol.py": "lathe_protocol.py",
    HERE.parent / "core" / "fim.py": "lathe_fim.py",
    HERE.parent / "core" / "quant.py": "lathe_quant.py",
}


def model_code_digest() -> str:
    """A digest of the code copied into the repository: a repository built by older code is stale."""
    import hashlib

    digest = hashlib.sha256()
    for source, name in sorted(MODEL_FILES.items(), key=lambda item: item[1]):
        digest.update(name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def checkpoint_dir(root: Path, name: str, version: int) -> Path:
    """Where a version's HF checkpoint sits in a repository: <root>/<name>/<version>/hf_model."""
    return root / name / str(version) / "hf_model"


def _config_type(field: Field) -> int:
    """Triton's wire type as the model configuration spells it (BYTES is TYPE_STRING there)."""
    return mc.DataType.Value("TYPE_STRING" if field.dtype == "BYTES" else f"TYPE_{field.dtype}")


def python_model_config(cfg: ServeConfig, version: int, name: str | None = None) -> mc.ModelConfig:
    """The Python-backend model's configuration (``name``: a variant's; default ``serve.model_name``)."""
    config = mc.ModelConfig(name=name or cfg.model_name, backend="python", max_batch_size=cfg.max_batch_size)
    config.model_transaction_policy.decoupled = True  # one response per generated chunk
    if cfg.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    for field in INPUTS:
        # `stop` lists differ in length between requests: ragged, so they still batch together
        config.input.add(
            name=field.name,
            data_type=_config_type(field),
            dims=list(field.dims),
            optional=field.optional,
            allow_ragged_batch=field.dims == (-1,),
        )
    for field in OUTPUTS:
        config.output.add(name=field.name, data_type=_config_type(field), dims=list(field.dims))
    kind = mc.ModelInstanceGroup.KIND_GPU if cfg.instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=cfg.instance_count, kind=kind)
    config.version_policy.specific.versions.append(version)
    for key, value in {
        "default_max_tokens": cfg.default_max_tokens,
        "max_tokens_limit": cfg.max_tokens_limit,
        "torch_threads": cfg.torch_threads,
        "engine": cfg.engine,
    }.items():
        config.parameters[key].string_value = str(value)
    return config


def vllm_model_config(cfg: ServeConfig, name: str | None = None) -> mc.ModelConfig:
    """The vLLM-backend model's configuration (the backend declares its own inputs and outputs)."""
    config = mc.ModelConfig(name=name or cfg.model_name, backend="vllm")
    config.model_transaction_policy.decoupled = True
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_MODEL)  # vLLM places itself on the GPUs
    return config


def parse_model_config(path: Path) -> mc.ModelConfig:
    """Read a config.pbtxt strictly: unknown fields or bad values raise ``InputError``."""
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"{path}: not a valid Triton model config ({exc})") from None


def _place_checkpoint(src: Path, dst: Path) -> None:
    """Copy the HF files, hard-linking where the filesystem allows (weights are the bulk)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def variant_name(model_name: str, variant: str) -> str:
    """The Triton model serving a variant beside ``model_name``: ``lathe-code-int8``, ``lathe-code-distill``, ``lathe-code-fp8``."""
    return f"{model_name}-{variant}"


def write_python_model(root: Path, name: str, model_dir: Path, version: int, cfg: ServeConfig) -> None:
    """One Python-backend model, ``root/name``: the checkpoint (fp32 or int8), the engine's files and its config."""
    vdir = root / name / str(version)
    if quantization_of(model_dir) == INT8:
        # int8 Linear kernels are CPU kernels: its instances run on CPUs on any node. Dynamic quantisation runs several
        # small parallel regions per Linear, which from the continuous engine's loop thread cost more than they save:
        # one intra-op thread decoded 2x faster than torch's default here (benchmarks/README.md), so `auto` (0) means 1.
        cfg = cfg.model_copy(update={"instance_kind": "cpu", "torch_threads": cfg.torch_threads or 1})
    _place_checkpoint(model_dir, checkpoint_dir(root, name, version))
    for source, file in MODEL_FILES.items():
        shutil.copy2(source, vdir / file)
    (root / name / "config.pbtxt").write_text(text_format.MessageToString(python_model_config(cfg, version, name)))
    check_repository(root, name, version)


def write_vllm_model(
    root: Path, name: str, model_dir: Path, version: int, cfg: ServeConfig, quantization: str | None = None
) -> None:
    """One vLLM-backend model, ``root/name``: the checkpoint and the engine arguments that point at its mounted path
    (``quantization``: vLLM's own, e.g. ``fp8``, applied on the GPU as it loads the fp32 weights)."""
    _place_checkpoint(model_dir, checkpoint_dir(root, name, version))
    where = f"{cfg.vllm.mount_path}/{name}/{version}/hf_model"
    hf = json.loads((model_dir / "config.json").read_text())
    engine_args = {
        "model": where,
        "tokenizer": where,
        "dtype": cfg.vllm.dtype,
        "gpu_memory_utilization": cfg.vllm.gpu_memory_utilization,
        "tensor_parallel_size": cfg.vllm.tensor_parallel_size,
        "max_num_seqs": cfg.vllm.max_num_seqs,
        "max_model_len": int(hf.get("max_position_embeddings", 2048)),
        "disable_log_requests": True,
        **({"quantization": quantization} if quantization else {}),
    }
    (root / name / str(version) / "model.json").write_text(json.dumps(engine_args, indent=2) + "\n")
    (root / name / "config.pbtxt").write_text(text_format.MessageToString(vllm_model_config(cfg, name)))
    check_repository(root, name, version)


def build_repositories(
    model_dir: Path,
    version: int,
    out_dir: Path,
    cfg: ServeConfig,
    variants: dict[str, tuple[Path, int]] | None = None,
) -> dict[str, Path]:
    """Write ``out_dir/triton`` and ``out_dir/triton-vllm`` for one model version; returns both roots.

    ``variants`` (``int8``, ``distill``: checkpoint and registered version) are written into the Python-backend
    repository beside the model as ``<model_name>-<variant>``, so one server serves them all; with
    ``serve.quantization: fp8`` the vLLM repository gets ``<model_name>-fp8`` over the same checkpoint.
    """
    if unknown := sorted(set(variants or {}) - set(VARIANTS)):
        raise InputError(f"variant(s) {unknown} are not ones lathe serves ({', '.join(VARIANTS)})")
    for path in (model_dir, *(d for d, _ in (variants or {}).values())):
        if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
            raise InputError(
                f"{path} is not an HF model with its tokenizer (config.json, tokenizer.json); export it with `lathe run train`"
            )
    hf = json.loads((model_dir / "config.json").read_text())
    archs = set(hf.get("architectures") or [])
    if not archs & VLLM_ARCHITECTURES:
        raise InputError(f"{model_dir}: architecture {sorted(archs)} is not one vLLM serves ({sorted(VLLM_ARCHITECTURES)})")
    roots = {"python": out_dir / "triton", "vllm": out_dir / "triton-vllm"}
    for root in roots.values():
        if root.exists():
            shutil.rmtree(root)
    write_python_model(roots["python"], cfg.model_name, model_dir, version, cfg)
    for variant, (variant_dir, variant_version) in (variants or {}).items():
        write_python_model(roots["python"], variant_name(cfg.model_name, variant), variant_dir, variant_version, cfg)
    write_vllm_model(roots["vllm"], cfg.model_name, model_dir, version, cfg)
    if cfg.quantization == "fp8":
        write_vllm_model(roots["vllm"], variant_name(cfg.model_name, "fp8"), model_dir, version, cfg, quantization="fp8")
    return roots


def publish(roots: dict[str, Path], uri: str, name: str, version: int) -> dict[str, str]:
    """Copy both repositories to ``<uri>/<name>/<version>/<triton|triton-vllm>/``, where the serving
    pods' init container syncs from (any fsspec URL: s3://, gs://, abfs://, or a local path)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"serve.publish_uri {uri!r}: {exc}; install the fsspec backend for it (s3fs, gcsfs, adlfs)") from None
    published = {}
    for kind, local in roots.items():
        target = f"{root.rstrip('/')}/{name}/{version}/{local.name}"
        if fs.exists(target):
            fs.rm(target, recursive=True)  # a republished version replaces the old files, never mixes with them
        fs.put(str(local) + "/", target, recursive=True)
        published[kind] = fs.unstrip_protocol(target)
    return published


def check_repository(root: Path, name: str, version: int) -> None:
    """The layout Triton loads: <root>/<name>/config.pbtxt (named <name>) and <root>/<name>/<version>/ with the model files."""
    config = parse_model_config(root / name / "config.pbtxt")
    if config.name != name:
        raise InputError(
            f"{root / name / 'config.pbtxt'} names model {config.name!r}; Triton needs it to match the folder {name!r}"
        )
    vdir = root / name / str(version)
    needed = {
        "python": [*MODEL_FILES.values(), "hf_model/config.json", "hf_model/tokenizer.json"],
        "vllm": ["model.json", "hf_model/config.json", "hf_model/tokenizer.json"],
    }.get(config.backend)
    if needed is None:
        raise InputError(f"{root / name}: backend {config.backend!r} is not one lathe packages (python, vllm)")
    missing = [f for f in needed if not (vdir / f).is_file()]
    if config.backend == "python" and not bytes_on_disk(vdir / "hf_model"):
        missing.append("hf_model's weights (*.safetensors, or int8_weights.pt)")
    if missing:
        raise InputError(f"{vdir} lacks {', '.join(missing)}; rerun `lathe run package --force`")
    if config.backend == "vllm":
        args = json.loads((vdir / "model.json").read_text())
        if not str(args.get("model", "")).endswith(f"/{name}/{version}/hf_model"):
            raise InputError(f"{vdir / 'model.json'}: model {args.get('model')!r} does not point at this version's checkpoint")
        if args.get("quantization") not in (None, *VLLM_QUANTIZATION):
            raise InputError(
                f"{vdir / 'model.json'}: quantization {args['quantization']!r} is not one lathe asks vLLM for "
                f"({', '.join(VLLM_QUANTIZATION)})"
            )
