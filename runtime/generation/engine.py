"""Responses from the job's own teacher: its model on rollout engines (SGLang on GPUs, transformers
otherwise), started on the teacher's pods for the generation phase and stopped before training.

The rollout backends take and return token ids (`RolloutBackend.generate`): the prompt is rendered with the
teacher's chat template here and the response decoded here. A response is `length` (cut off) when it fills
maxNewTokens without the end-of-sequence token, `stop` otherwise.
"""

from collections.abc import Iterator
from typing import Any

import ray

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import Role
from kubedistill.api.spec import Backend, RolloutSpec
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.chat import ChatFormat, encode_chat
from kubedistill.runtime.data.tokenize import student_chat_format
from kubedistill.runtime.engines.actor import EngineActor
from kubedistill.runtime.engines.group import EngineActorGroup, EngineActors, start_engine_actors
from kubedistill.runtime.engines.layout import EnginePlacement, engine_device, resolve_backend
from kubedistill.runtime.generation.prompts import Prompt
from kubedistill.runtime.generation.store import CUT_OFF, FINISHED, Response, Settings
from kubedistill.runtime.models.loading import compute_dtype, load_tokenizer
from kubedistill.runtime.models.roles import student_tokenizer_path, teacher_spec
from kubedistill.runtime.rollout.actor import RolloutActor
from kubedistill.runtime.rollout.backend import RolloutBackend, SamplingConfig

PROMPTS_PER_CALL = 16
"""Prompts one engine call answers: small enough that the file grows (and a rerun resumes) as it goes."""


class GenerationActor(EngineActor):
    def build(self, placement: EnginePlacement) -> RolloutBackend:
        spec = self.job.spec
        teacher = teacher_spec(self.job)
        assert teacher.model is not None, "teacher_spec fills a missing teacher model in with the student's"
        if resolve_backend(teacher.backend) == Backend.SGLANG:
            from kubedistill.runtime.engines.sglang.rollout import SGLangRollout

            # The rollout engine's settings, from the teacher's: one engine of tensorParallel GPUs.
            engine = RolloutSpec(
                tensor_parallel=teacher.tensor_parallel, mem_fraction_static=teacher.mem_fraction_static
            )
            return SGLangRollout(
                engine,
                teacher.model,
                placement,
                colocate=spec.cluster.colocate,
                precision=spec.training.precision,
                seed=spec.training.seed,
            )
        from kubedistill.runtime.engines.transformers.rollout import TransformersRollout

        return TransformersRollout(
            teacher.model, compute_dtype(spec.training.precision), engine_device(placement)
        )


class AnswerGenerators(EngineActorGroup):
    """Engines answering the generation phase's prompts: their model's chat template renders each prompt,
    its tokenizer decodes each answer."""

    def __init__(self, engines: EngineActors, tokenizer_path: str) -> None:
        super().__init__(engines)
        self._tokenizer: Any = load_tokenizer(tokenizer_path)

    def generate(
        self,
        prompts: list[Prompt],
        missing: dict[str, list[int]],
        settings: Settings,
        samples_per_prompt: int,
        prompts_per_call: int = PROMPTS_PER_CALL,
    ) -> Iterator[tuple[Prompt, int, Response]]:
        """(prompt, sample, response) for each `missing[prompt.id]` sample, call by call as engines finish.

        Calls go round-robin to the engines (each runs its calls in turn); a call draws every sample of its
        prompts and keeps the missing ones, with seed + the call's index.
        """
        assert settings.temperature is not None and settings.top_p is not None, (
            "settings_of fills in the own teacher's sampling"
        )
        calls = [prompts[i : i + prompts_per_call] for i in range(0, len(prompts), prompts_per_call)]
        pending: dict[ray.ObjectRef, list[Prompt]] = {}
        for index, call in enumerate(calls):
            sampling = SamplingConfig(
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                samples_per_prompt=samples_per_prompt,
                seed=settings.seed + index,
            )
            actor = self.actors[index % len(self.actors)]
            pending[actor.generate.remote([self._prompt_ids(p) for p in call], sampling)] = call
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            call = pending.pop(ready)
            outputs = ray.get(ready)
            for i, prompt in enumerate(call):
                for sample in missing[prompt.id]:
                    ids = outputs[i * samples_per_prompt + sample]
                    yield prompt, sample, self._response(ids, settings.max_new_tokens)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        encoded = self._tokenizer.apply_chat_template(
            prompt.messages, add_generation_prompt=True, tokenize=True, **_tools(prompt)
        )
        # transformers 5 returns a BatchEncoding here, 4.x a list.
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _response(self, ids: list[int], max_new_tokens: int) -> Response:
        eos = self._tokenizer.eos_token_id
        ended = bool(ids) and ids[-1] == eos
        reason = CUT_OFF if not ended and len(ids) >= max_new_tokens else FINISHED
        return Response(self._tokenizer.decode(ids, skip_special_tokens=True), reason)


class TeacherGenerators(AnswerGenerators):
    def __init__(self, job: DistillationJob, cluster: ClusterView) -> None:
        teacher = teacher_spec(job)
        assert teacher.model is not None, "teacher_spec fills a missing teacher model in with the student's"
        if teacher.nodes_per_replica != 1:
            raise ValueError(
                "spec.teacher.nodesPerReplica: a teacher that generates (spec.generation) runs on one node; "
                "use an endpoint for a teacher larger than a node"
            )
        super().__init__(
            _one_node_engines(
                GenerationActor,
                job,
                Role.TEACHER,
                teacher.replicas,
                teacher.tensor_parallel,
                teacher.backend,
                cluster,
            ),
            teacher.tokenizer or teacher.model,
        )


class StudentGenerators(AnswerGenerators):
    """The student's own answers from its initial weights, on the rollout engines (spec.rollout: backend,
    engines, tensorParallel), before training: mode preference's rejected answers."""

    def __init__(self, job: DistillationJob, cluster: ClusterView) -> None:
        rollout = job.spec.rollout
        assert rollout is not None, "a rule asks spec.rollout for the student's answers"
        super().__init__(
            _one_node_engines(
                RolloutActor,
                job,
                Role.ROLLOUT,
                rollout.engines,
                rollout.tensor_parallel,
                rollout.backend,
                cluster,
            ),
            student_tokenizer_path(job),
        )
        self._chat_format = student_chat_format(job.spec.data)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        return training_prompt_ids(self._tokenizer, prompt, self._chat_format)


def training_prompt_ids(tokenizer: Any, prompt: Prompt, chat_format: ChatFormat) -> list[int]:
    """The prompt as training renders a pair's (spec.data.chatTemplate and chatTemplateKwargs, e.g. Qwen3's
    enable_thinking), with the generation prompt: the student's answer is then what it writes after the
    very prompt it learns on."""
    encoded = encode_chat(
        tokenizer,
        prompt.messages,
        first_response=len(prompt.messages),
        add_generation_prompt=True,
        tools=prompt.carried.get("tools"),
        chat_format=chat_format,
    )
    return [int(token) for token in encoded.ids]


def _one_node_engines(
    actor: type[EngineActor],
    job: DistillationJob,
    role: Role,
    engines: int,
    tensor_parallel: int,
    backend: Backend,
    cluster: ClusterView,
) -> EngineActors:
    """`engines` engines of the generation phase, each on one node: an SGLang engine takes its
    `tensor_parallel` GPUs, a transformers engine one."""
    sglang = resolve_backend(backend) == Backend.SGLANG
    return start_engine_actors(
        actor,
        job,
        role,
        engines=engines,
        nodes_per_engine=1,
        gpus_per_actor=float(tensor_parallel) if sglang else 1.0,
        cluster=cluster,
    )


def _tools(prompt: Prompt) -> dict[str, Any]:
    tools = prompt.carried.get("tools")
    return {"tools": tools} if tools else {}
