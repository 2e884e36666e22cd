"""Distillation losses: pure functions over logits, and a fused chunked variant over hidden states."""
