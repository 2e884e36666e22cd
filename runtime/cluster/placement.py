"""Ray resources each actor asks for, decided once from the job and the cluster the driver is attached to.

In a KubeDistill RayJob every worker group advertises a custom resource per role it hosts
(`kubedistill.api.placement`), so asking for it places teacher actors on teacher pods. On a machine without
those resources (a local `kubedistill run`) actors ask for small CPU shares only, so that a teacher and two
student ranks fit on a two-core laptop.
"""

from dataclasses import dataclass, field
from typing import Any

from kubedistill.api.placement import Role, role_resource

LOCAL_CPU_SHARE = 0.25
SHARED_GPU_ENV = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.env:
            options["runtime_env"] = {"env_vars": dict(self.env)}
        return options

    def bundle(self) -> dict[str, float]:
        """The same resources as one placement-group bundle."""
        gpus = {"GPU": self.num_gpus} if self.num_gpus else {}
        return {"CPU": self.num_cpus, **gpus, **self.resources}


@dataclass(frozen=True)
class ClusterView:
    """What the driver sees of the Ray cluster: total GPUs and custom resources."""

    gpus: float
    resources: frozenset[str]

    @classmethod
    def current(cls) -> "ClusterView":
        import ray

        totals = ray.cluster_resources()
        return cls(gpus=float(totals.get("GPU", 0.0)), resources=frozenset(totals))

    @property
    def has_gpus(self) -> bool:
        return self.gpus > 0


def actor_resources(
    role: Role, gpus: float, cluster: ClusterView, colocate: bool = False, teacher: int | None = None
) -> ActorResources:
    """Resources of one actor of `role` that drives `gpus` accelerators when there are any; `teacher`: the
    index of one of several colocated teachers, which asks for its own units (`own_teacher_units`).

    Colocated, the student ranks hold the GPUs in Ray's accounting and the engines take turns on the same
    devices: an engine asks for its role's units on the node (placing it there) but no GPU of its own, and
    sees every GPU of the node (Ray does not narrow CUDA_VISIBLE_DEVICES), as KDFlow's engines do.
    """
    if not cluster.has_gpus:
        return ActorResources(num_cpus=LOCAL_CPU_SHARE)
    name = role_resource(role, teacher)
    resources = {name: gpus} if name in cluster.resources else {}
    if colocate and role != Role.STUDENT:
        return ActorResources(num_cpus=1.0, num_gpus=0.0, resources=resources, env=SHARED_GPU_ENV)
    return ActorResources(num_cpus=1.0, num_gpus=gpus, resources=resources)
