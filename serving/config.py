"""Typed configuration of packaging and serving (section `serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lathe.core.config import Strict
from lathe.core.models import MODEL_NAME


class VllmConfig(Strict):
    """The GPU variant of the repository: Triton's vLLM backend over the same HF checkpoint."""

    mount_path: str = Field(
        "/models/vllm", description="Where the repository is mounted in the serving pod (model.json points into it)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache).")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one model instance spans.")
    dtype: Literal["auto", "bfloat16", "float16"] = Field("bfloat16", description="Weights and activations on the GPU.")
    max_num_seqs: int = Field(128, gt=0, description="Sequences vLLM batches continuously.")


class LoadConfig(Strict):
    """A load test: concurrent clients, each sending its next request as soon as the last ends."""

    clients: int = Field(4, gt=0, description="Concurrent streaming clients.")
    seconds: float = Field(5.0, gt=0, description="How long the load is held.")
    max_tokens: int = Field(16, gt=0, description="Tokens each request asks for.")


class AbConfig(Strict):
    """Which users a request's track is: staff, a candidate's share of everyone else, or production."""

    staff_users: list[str] = Field(default_factory=list, description="User ids served by the `staff` track.")
    candidate_share: float = Field(0.0, ge=0, le=1, description="Share of non-staff users on `candidate` (0 = no A/B).")
    salt: str = Field("lathe-ab", description="Mixed into the user hash; a new salt reshuffles users between arms.")
    min_shown: int = Field(100, gt=0, description="Shown suggestions per arm before `lathe ab report` names a winner.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the report's two-proportion test.")


class TrackUpstream(Strict):
    """Where one track's model is served."""

    triton_url: str = Field(description="Triton's gRPC address for this track (e.g. the track's Service in Kubernetes).")
    model: str = Field(MODEL_NAME, description="The Triton model name there.")


class GatewayConfig(Strict):
    """The OpenAI-compatible HTTP gateway in front of Triton (`/v1/completions`, `/v1/models`, `/v1/events`)."""

    host: str = Field(
        "127.0.0.1", description="Address the gateway binds; beyond loopback it needs API keys or allow_unauthenticated."
    )
    port: int = Field(8080, ge=0, le=65535, description="The gateway's HTTP port (`lathe serve --api-port`; 0 = any free port).")
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC address when the gateway runs alone (`lathe gateway`).")
    api_keys_file: str | None = Field(
        None, description="File of SHA-256 hex digests of accepted API keys, one per line (# comments)."
    )
    api_keys_env: str = Field(
        "LATHE_API_KEY_HASHES", description="Environment variable with comma-separated SHA-256 digests of keys."
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve without keys on a non-loopback address (behind another auth layer)."
    )
    max_n: int = Field(8, gt=0, description="Most completions one request may ask for (`n`).")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger request bodies are refused with 413.")
    request_timeout_s: float = Field(120.0, gt=0, description="A completion that takes longer is cancelled with 504.")
    user_header: str = Field(
        "x-lathe-user", description="Header with a stable user id (routing, telemetry); else the body's `user`."
    )
    tracks: dict[str, TrackUpstream] = Field(
        default_factory=dict,
        description="Upstream per track (staff, production, candidate); a track not listed is served by "
        "triton_url (or the local server under `lathe serve`).",
    )
    ab: AbConfig = Field(default_factory=AbConfig)
    telemetry_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the telemetry store (postgresql+psycopg://...); "
        "default sqlite under runs/<profile>/serve/telemetry.db.",
    )
    store_text: bool = Field(
        True, description="Keep prompts and completions in the telemetry store (needed by `lathe feedback export`)."
    )


class QuantizeConfig(Strict):
    """How the `quantize` stage measures the int8 variant against the fp32 model it is made from."""

    agreement_prompts: int = Field(
        16,
        gt=0,
        description="Prompts of the first eval benchmark whose greedy completions the two "
        "models' engines produce and compare token by token.",
    )
    agreement_tokens: int = Field(32, gt=0, description="Greedy tokens each engine generates per prompt.")
    val_batches: int = Field(8, gt=0, description="Batches of the shards' validation split both models' loss is measured on.")
    batch_size: int = Field(8, gt=0, description="Samples per validation batch.")


class ServeConfig(Strict):
    """Triton model repository and server settings."""

    model_name: str = Field(MODEL_NAME, description="The Triton model name (clients address /v2/models/<name>).")
    track: str = Field("staff", description="Package the registered version holding this MLflow alias (set by the gate).")
    publish_uri: str | None = Field(
        None, description="Object store the repositories are copied to (<uri>/<name>/<version>/triton/): the k8s MODEL_BUCKET."
    )
    engine: Literal["batch", "continuous"] = Field(
        "continuous",
        description="batch: each execute() generates its requests as one batch (a later request waits for it); "
        "continuous: one generation loop admits new requests at every decode step.",
    )
    max_batch_size: int = Field(
        8, gt=0, description="Most requests one execute() generates together (continuous: rows in flight)."
    )
    dynamic_batching: bool = Field(True, description="Gather concurrent requests into batches (off: one request per execute).")
    max_queue_delay_us: int = Field(
        0, ge=0, description="How long the batcher waits to fill a batch; it adds to a lone request's latency."
    )
    instance_kind: Literal["cpu", "gpu"] = Field("cpu", description="Where the Python-backend instances run.")
    instance_count: int = Field(1, gt=0, description="Model instances (per GPU for kind gpu).")
    torch_threads: int = Field(
        0,
        ge=0,
        description="Intra-op threads per instance; 0 = torch's default (an int8 variant: 1, "
        "measured faster for its many small quantised ops).",
    )
    default_max_tokens: int = Field(64, gt=0, description="Tokens generated when a request does not say.")
    max_tokens_limit: int = Field(1024, gt=0, description="Larger max_tokens requests are refused.")
    http_port: int = Field(8000, ge=0, le=65535, description="Triton HTTP port (0 = any free port).")
    grpc_port: int = Field(8001, ge=0, le=65535, description="Triton gRPC port (0 = any free port).")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Triton Prometheus metrics port (0 = any free port).")
    ready_timeout_s: float = Field(180.0, gt=0, description="How long to wait for /v2/health/ready.")
    stop_timeout_s: float = Field(15.0, gt=0, description="SIGTERM grace period before SIGKILL.")
    canary_prompt: str = Field("def fibonacci(n):\n", description="The completion the `canary` stage asks the served model for.")
    canary_suffix: str = Field(
        "\n\nprint(fibonacci(10))\n", description="The code after the cursor in the canary's FIM request (through the gateway)."
    )
    canary_load: LoadConfig = Field(
        default_factory=LoadConfig, description="The canary's short load test (latency for the summary)."
    )
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    quantization: Literal["none", "int8", "fp8"] = Field(
        "none",
        description="The quantised variant served beside the full-precision model. int8: `quantize` makes it (CPU, "
        "int8 Linear layers), `quantize_eval` gates it (alias `<track>-int8`), `package` writes it as the Python-backend "
        "model `<model_name>-int8`. fp8: the vLLM repository's `<model_name>-fp8`, which vLLM quantises on the GPU at load.",
    )
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    student: bool = Field(
        False,
        description="Also serve the distilled student that passed `distill_eval` (alias "
        "`<track>-distill`) as `<model_name>-distill`, for an A/B test against the full model.",
    )
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
