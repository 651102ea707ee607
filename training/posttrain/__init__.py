"""Post-training: mined pairs (``sft_data``), SFT, LoRA, DPO, the finetune job (``finetune``) and its stages (``stage``)."""
