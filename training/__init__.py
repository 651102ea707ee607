"""Training: a Llama-architecture code model trained by MosaicML Composer from MDS shards."""
