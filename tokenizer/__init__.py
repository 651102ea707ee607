"""The code vocabulary (stage `tokenizer`) and token shards for MosaicML Streaming (stage `shards`)."""
