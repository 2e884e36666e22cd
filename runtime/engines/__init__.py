"""What teacher and rollout engines share: the actor base, the group, where engines run, weight sync, and
the transformers and SGLang backends."""
