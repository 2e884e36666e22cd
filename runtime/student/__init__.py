"""The student actor group: FSDP2 training ranks."""
