"""Distillation: the student's loss against a teacher's logits (``loss``) and the distill stage (``stage``)."""
