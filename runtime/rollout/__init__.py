"""The rollout actor group (on-policy distillation): generation with the student's current weights."""
