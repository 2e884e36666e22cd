"""The rollout actor group: engines generating with the student's current weights, prompts spread evenly."""

import ray
from ray.actor import ActorHandle

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.placement import Role
from kubedistill.api.spec import Backend
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.group import EngineActorGroup, start_engine_actors
from kubedistill.runtime.engines.layout import resolve_backend
from kubedistill.runtime.rollout.actor import RolloutActor
from kubedistill.runtime.rollout.backend import SamplingConfig


class RolloutActorGroup(EngineActorGroup):
    def __init__(self, job: DistillationJob, cluster: ClusterView) -> None:
        spec = job.spec.rollout
        if spec is None:
            raise SpecError("spec.rollout", "required when spec.mode is onPolicy")
        self.sglang = resolve_backend(spec.backend) == Backend.SGLANG
        self.tensor_parallel = spec.tensor_parallel if self.sglang else 1
        """Ranks per engine (a transformers engine is one process)."""
        super().__init__(
            start_engine_actors(
                RolloutActor,
                job,
                Role.ROLLOUT,
                engines=spec.engines,
                nodes_per_engine=1,
                gpus_per_actor=float(self.tensor_parallel),
                cluster=cluster,
            )
        )

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """`samples_per_prompt` responses per prompt, prompt-major, in the prompts' order; `images`, one
        per prompt, go with their prompts."""
        return generate_on(self.actors, prompts, sampling, images)


def generate_on(
    actors: list[ActorHandle],
    prompts: list[list[int]],
    sampling: SamplingConfig,
    images: list[ImageInputs | None] | None = None,
) -> list[list[int]]:
    """Responses from the engines of `actors` (rollout engines, or teachers writing a step's responses),
    prompt-major in the prompts' order. Engine e gets the contiguous slice e of the prompts, with its own seed
    derived from the round's."""
    engines = len(actors)
    size = -(-len(prompts) // engines)
    slices = [slice(e * size, (e + 1) * size) for e in range(engines)]
    refs = [
        actor.generate.remote(
            prompts[part],
            SamplingConfig(**{**sampling.__dict__, "seed": sampling.seed * 1000 + e}),
            None if images is None else images[part],
        )
        for e, (actor, part) in enumerate(zip(actors, slices, strict=True))
        if prompts[part]
    ]
    return [response for part in ray.get(refs) for response in part]
