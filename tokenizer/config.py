"""Typed configuration of the tokenizer and shards stages."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lathe.core.config import Strict


class TokenizerConfig(Strict):
    """Byte-level BPE trained on a seeded sample of the clean data."""

    vocab_size: int = Field(4096, ge=256, description="Target size including special tokens; rounded up to a multiple of 64.")
    sample_bytes: int = Field(50_000_000, gt=0, description="Byte budget of the training sample, drawn by Spark.")
    heldout_fraction: float = Field(
        0.05, gt=0, lt=1, description="Files (by a stable hash of id) held out of training for the report."
    )
    seed: int = Field(0, description="Seed of the training sample.")
    min_frequency: int = Field(2, ge=1, description="Pairs seen fewer times are never merged.")
    reserved_sentinels: int = Field(
        64, ge=0, description="`<|extra_id_N|>` tokens kept free for later objectives (UL2) without resizing."
    )
    retrain: bool = Field(
        False,
        description="Train a new vocabulary even when train.init_from names a model to continue: training then "
        "starts from scratch. By default a retrain keeps the vocabulary of the model it continues from.",
    )
    ablation_vocab_sizes: list[int] = Field(
        default_factory=lambda: [1024, 2048],
        description="Extra vocabulary sizes trained on the same sample for the report (besides vocab_size).",
    )

    @field_validator("vocab_size")
    @classmethod
    def _round_to_64(cls, v: int) -> int:
        # Embedding and LM-head matmuls are fastest when the vocabulary is a multiple of 64.
        return -(-v // 64) * 64

    @model_validator(mode="after")
    def _room_for_merges(self) -> TokenizerConfig:
        # Byte-level BPE starts from the 256 bytes plus the special tokens; merges fill the rest.
        from lathe.tokenizer.special import BASE_SPECIAL_TOKENS

        floor = 256 + len(BASE_SPECIAL_TOKENS) + self.reserved_sentinels
        if self.vocab_size <= floor:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves no room for merges: the 256 bytes, {len(BASE_SPECIAL_TOKENS)} special "
                f"tokens and {self.reserved_sentinels} reserved sentinels already take {floor}; raise tokenizer.vocab_size "
                "or lower tokenizer.reserved_sentinels"
            )
        return self


class ShardsConfig(Strict):
    """Tokenize, FIM-transform and pack the clean data into MDS shards."""

    seq_len: int = Field(512, ge=8, description="Tokens per packed sample.")
    fim_rate: float = Field(0.5, ge=0, le=1, description="Share of documents turned into fill-in-the-middle examples.")
    fim_spm_rate: float = Field(0.5, ge=0, le=1, description="Share of FIM examples in SPM order (the rest PSM).")
    fim_line_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of FIM examples whose middle is whole lines (one, or more with halving odds) instead of "
        "the span between two random characters: a completion at a line's end, which a small model learns to close "
        "sooner. The rest keep the random cut, so a cursor inside a line stays trained.",
    )
    fim_context: int | None = Field(
        None,
        ge=16,
        description="Longest FIM example in tokens: a longer FIM document is cut at line ends into pieces that each "
        "become a FIM example, so a middle and its end share one packed sample. None = half of seq_len (an example "
        "that long lies whole in one sample about half the time); at most seq_len.",
    )
    val_fraction: float = Field(0.02, gt=0, lt=1, description="Share of documents (stable hash of id) in validation.")
    seed: int = Field(0, description="Seed of the FIM decisions and of the sample order.")
    partitions: int = Field(4, ge=1, description="Writer partitions per split (one MDS sub-directory each).")
    shard_size_limit: int = Field(1 << 26, gt=0, description="Bytes per MDS shard before compression.")
    compression: str | None = Field("zstd", description="MDS shard compression (zstd, gz, ...; null for none).")
    output: str | None = Field(
        None, description="Where the shards go: a local path or an object-store URI; default the stage folder."
    )

    @model_validator(mode="after")
    def _fim_fits(self) -> ShardsConfig:
        if self.fim_context is not None and self.fim_context > self.seq_len:
            raise ValueError(
                f"shards.fim_context={self.fim_context} is longer than shards.seq_len={self.seq_len}: a FIM example "
                "would never fit one sample; lower shards.fim_context or leave it unset"
            )
        return self

    @property
    def fim_example_tokens(self) -> int:
        """The longest FIM example, in tokens (``fim_context``, or half of ``seq_len``)."""
        return self.fim_context or self.seq_len // 2
