"""Engines on transformers (CPU or one GPU each): the teacher and rollout backends."""
