"""Everything that talks to SGLang: engine and request arguments, the engine, the teacher and rollout
backends, and the GPU smoke check."""
