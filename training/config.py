"""Typed configuration of the `train` stage: model, optimizer, schedule, parallelism, tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lathe.core.config import Strict
from lathe.core.models import MODEL_NAME


class ModelConfig(Strict):
    """A decoder-only Llama (RoPE, SwiGLU, RMSNorm, SDPA attention) built from these numbers."""

    d_model: int = Field(256, gt=0, description="Hidden size.")
    n_layers: int = Field(4, gt=0, description="Transformer blocks.")
    n_heads: int = Field(4, gt=0, description="Attention heads.")
    n_kv_heads: int | None = Field(None, gt=0, description="Key/value heads (grouped-query attention); None = n_heads.")
    ffn_hidden: int | None = Field(None, gt=0, description="SwiGLU hidden size; None = 8/3 d_model rounded up to 64.")
    max_seq_len: int = Field(512, gt=0, description="Context length (RoPE positions); must cover shards.seq_len.")
    rope_theta: float = Field(10_000.0, gt=0, description="RoPE base.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the LM head.")
    init_std: float = Field(0.02, gt=0, description="Initialiser standard deviation.")
    vocab_size: int | None = Field(None, description="None = the tokenizer's; if set, it must equal the tokenizer's.")


class OptimizerConfig(Strict):
    """Optimizer with decoupled weight decay."""

    name: Literal["decoupled_adamw", "decoupled_lionw"] = "decoupled_adamw"
    lr: float = Field(3e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="Decoupled: multiplied by lr/initial_lr, not by the gradient.")


class LossSpikeConfig(Strict):
    """Detect a training-loss spike against the recent loss statistics."""

    window: int = Field(20, ge=2, description="Recent batches whose loss mean and deviation define normal.")
    sigmas: float = Field(6.0, ge=0, description="A loss above mean + sigmas * std (and above mean * min_ratio) is a spike.")
    min_ratio: float = Field(1.2, ge=1, description="Ignore tiny absolute jumps when the loss is very flat.")
    action: Literal["log", "skip", "stop"] = Field(
        "log", description="log: record it; skip: do not step the optimizer on that batch; stop: end training."
    )


class WandbConfig(Strict):
    """Weights & Biases through Composer's WandBLogger."""

    enabled: bool = True
    project: str = "lathe"
    online: bool = Field(False, description="Upload live (needs WANDB_API_KEY); else an offline run dir `wandb sync` uploads.")


class ContinueConfig(Strict):
    """The schedule when training continues from earlier weights (train.init_from)."""

    lr: float = Field(
        1e-3,
        gt=0,
        description="Peak learning rate: below pretraining's, so new data refines the weights instead of overwriting them.",
    )
    warmup: str = Field("5ba", description="Re-warm from 0 to lr: a cold optimizer at full rate on shifted data spikes the loss.")


class MixtureConfig(Strict):
    """What a retrain trains on: the newest snapshot's stream and a replay share of the earlier ones."""

    replay: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Share of each epoch's samples drawn from earlier snapshots' streams (in proportion to their size), "
        "so continued training does not forget old code; the rest is the newest stream, seen once per epoch.",
    )


class LoraConfig(Strict):
    """Low-rank adapters (LoRA, through peft) for parameter-efficient post-training."""

    rank: int = Field(8, gt=0, description="Rank r of each adapter's A (r x in) and B (out x r) matrices.")
    alpha: float = Field(16.0, gt=0, description="Scale: the adapter adds (alpha / rank) * B A x to the layer's output.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Linear layers (by name, as in the Llama checkpoint) that get an adapter: all attention and MLP "
        "projections by default, which QLoRA found works better than attention alone.",
    )
    lr_multiplier: float = Field(
        10.0,
        gt=0,
        description="Adapters train at this multiple of the section's optimizer.lr: B starts at zero and the "
        "adapters are few, so LoRA recipes run about ten times full fine-tuning's rate.",
    )


class ComposerConfig(Strict):
    """The Composer trainer's settings, shared by pretraining and post-training.

    The global batch is fixed; each of the world's ranks takes global / world_size.
    """

    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    warmup: str = Field("10ba", description="Linear warmup, Composer time string (ba, tok, dur).")
    alpha_f: float = Field(0.1, ge=0, le=1, description="Cosine decays to alpha_f * lr.")
    max_duration: str = Field("60ba", description="Training length: batches (ba), tokens (tok) or epochs (ep).")
    global_train_batch_size: int = Field(8, gt=0, description="Samples per optimizer step across all ranks.")
    device_train_microbatch_size: int | Literal["auto"] = Field(
        8, description="Samples per forward/backward on one device; `auto` searches the largest that fits (GPU)."
    )
    grad_clip_norm: float = Field(1.0, gt=0)
    eval_interval: str = Field("20ba", description="Validation every this often (and at the end).")
    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = Field("fp32", description="fp32 on CPU; amp_bf16 on GPU.")
    fsdp: Literal["FULL_SHARD", "SHARD_GRAD_OP"] | None = Field(
        None, description="FSDP2 sharding: FULL_SHARD ~ ZeRO-3, SHARD_GRAD_OP ~ ZeRO-2; None = DDP."
    )
    activation_checkpointing: bool = False
    activation_cpu_offload: bool = False
    save_interval: str = Field("10ba", description="Checkpoint every this often (for autoresume).")
    save_folder: str | None = Field(None, description="Local path or object-store URI; default <stage>/checkpoints.")
    save_num_checkpoints_to_keep: int = Field(2, description="-1 keeps all.")
    seed: int = 17
    nproc: int = Field(1, ge=1, description="Processes per node (Composer launcher); 1 runs in the lathe process.")
    num_workers: int = Field(0, ge=0, description="DataLoader workers per rank.")
    peak_flops_per_device: float | None = Field(
        None, description="For MFU off-GPU; on GPUs Composer knows the peak of common devices."
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    registered_model: str = Field(MODEL_NAME, description="MLflow Model Registry name for the exported model.")


class TrainConfig(ComposerConfig):
    """Pretraining (and continued pretraining) with the Composer trainer."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    train_metrics_every: int = Field(
        10,
        ge=1,
        description="Compute training metrics over the logits on one batch in this many (1 = every batch); the loss is logged every batch.",
    )
    eval_subset_num_batches: int = Field(-1, description="Validation batches per evaluation; -1 = the whole split.")
    num_canonical_nodes: int = Field(
        8,
        ge=1,
        description="Streaming's canonical nodes: the sample order is the same on any node count that divides "
        "it (or it divides), so a job resumed or rerun on another cluster size sees the same batches.",
    )
    loss_spike: LossSpikeConfig = Field(default_factory=LossSpikeConfig)
    init_from: str | None = Field(
        None,
        description="Continue from these weights (never optimizer state): models:/<name>@<alias> (no version holds the "
        "alias yet: train from scratch), models:/<name>/<version>, an HF model directory, or a Composer checkpoint file.",
    )
    continued: ContinueConfig = Field(default_factory=ContinueConfig)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock seconds the training loop may take, from its first batch: once a few batches are "
        "timed, max_duration (in ba) is lowered to the batches that fit, so the cosine schedule still ends at its "
        "floor; max_duration stays the ceiling. For a profile that is to train for a fixed time on machines of "
        "unequal speed. None = max_duration as given.",
    )

    @model_validator(mode="after")
    def _budget_in_batches(self) -> TrainConfig:
        if self.time_budget_s is not None and not self.max_duration.endswith("ba"):
            raise ValueError(
                f"train.time_budget_s needs train.max_duration in batches (the ceiling), got {self.max_duration!r}; "
                "write it as <n>ba"
            )
        return self


class FinetuneConfig(ComposerConfig):
    """Post-training of a registered model (the `sft` and `dpo` stages), on the same trainer as pretraining:
    FSDP, activation checkpointing and CPU offload apply alike."""

    init_from: str = Field(
        "models:/lathe-code@production",
        description="The model to tune: models:/<name>@<alias>, models:/<name>/<version> or an HF model directory. "
        "Its tokenizer and architecture are the tuned model's.",
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters only (then merged for serving); None = every weight.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the examples held out (by a stable hash of their id).")
    max_seq_len: int | None = Field(
        None, gt=0, description="Longest example in tokens (longer ones are dropped as `too_long`); None = the model's context."
    )
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-4))
    warmup: str = Field("0.1dur", description="Linear warmup, Composer time string (ba, tok, dur).")
    max_duration: str = Field("2ep", description="Training length: epochs (ep), batches (ba) or tokens (tok).")
    eval_interval: str = Field("1ep", description="Validation every this often (and before and after training).")
    save_interval: str = Field("1ep", description="Checkpoint every this often (for autoresume).")


class SFTConfig(FinetuneConfig):
    """Supervised fine-tuning on the pairs stage's (prompt, response) pairs; the loss is on the response only."""


class DPOConfig(FinetuneConfig):
    """Direct Preference Optimization on the preferences stage's pairs, against the starting model's
    log-probabilities (computed once, stored beside the pairs)."""

    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=5e-5))
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the starting model (the KL penalty's weight).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Conservative DPO: the share of labels assumed flipped; 0 = plain DPO."
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Add this times the chosen answers' per-token cross-entropy to the loss (RPO, Pang et al. "
        "2024): DPO alone can lower the likelihood of the chosen code too, which the gate's val_loss would refuse.",
    )


class DistillConfig(TrainConfig):
    """Knowledge distillation (the `distill` stage): a smaller student (``model``) trained on the shards against a
    registered teacher's logits, computed on the fly in the same process with no gradient.

    The loss is ``ce_weight`` x cross-entropy on the next tokens + ``kl_weight`` x T^2 x KL(teacher_T || student_T),
    both softened by ``temperature`` T (Hinton et al. 2015; T^2 keeps the gradient's scale as T changes).
    ``init_from`` None trains the student from scratch; a smaller registered model (its vocabulary) starts it.
    """

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(n_layers=2), description="The student's shape.")
    teacher: str = Field(
        "models:/lathe-code@production",
        description="The teacher: models:/<name>@<alias>, "
        "models:/<name>/<version> or an HF model directory; it must share the shards' vocabulary.",
    )
    temperature: float = Field(
        2.0, gt=0, description="Softens both distributions, so the teacher's ranking of unlikely tokens teaches too."
    )
    kl_weight: float = Field(0.5, ge=0, description="Weight of the T^2-scaled KL to the teacher.")
    ce_weight: float = Field(0.5, ge=0, description="Weight of the usual next-token cross-entropy.")

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.kl_weight + self.ce_weight <= 0:
            raise ValueError("kl_weight and ce_weight are both 0: give the loss a weight")
        return self
