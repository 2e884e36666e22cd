"""The KubeDistill runtime: the Ray actor groups, losses, trainer and CLI that run inside the job's pods."""
