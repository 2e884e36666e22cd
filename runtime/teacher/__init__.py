"""The teacher actor group: inference only, returning final hidden states, never logits."""
