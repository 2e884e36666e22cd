"""Where each step's global batch comes from: the dataset (off-policy, self-distillation, SFT) or the
student's own samples (on-policy, and self-distillation with a rollout section).

A source maps the trainer's position (epoch, step within the epoch) to the sequences of that step, the same
way every time, so a resumed job sees what an uninterrupted one would have seen.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.spec import DistillationJobSpec, Mode
from kubedistill.runtime.data.batching import batches_per_epoch, global_batches, groups_of, steps_per_epoch
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.data.mixture import Mixture
from kubedistill.runtime.data.retokenize import Retokenizer, alignment_counts
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import RolloutActorGroup

log = logging.getLogger(__name__)


def epoch_steps(spec: DistillationJobSpec, records: int) -> int:
    """Optimizer steps in one epoch over `records` training records: every record in global batches (the
    last one smaller where they do not divide), or (on-policy) full rounds of prompts, each feeding
    `steps_per_round` steps (the remaining prompts wait for another epoch's order: `prompts_left_out`). Mixing
    policies (spec.rollout.lmbda below 1), a step is a global batch of the dataset either way."""
    rollout = spec.rollout if spec.on_policy and not spec.mixes_policies else None
    field, batch = (
        ("spec.rollout.batchSize", rollout.batch_size)
        if rollout is not None
        else ("spec.training.globalBatchSize", spec.training.global_batch_size)
    )
    if records < batch:
        data = "spec.data.mixture" if spec.data.mixture is not None else "spec.data.train"
        raise SpecError(
            field, f"{batch} is more than the {records} training records ({data}): lower it or add data"
        )
    if rollout is None:
        return batches_per_epoch(records, batch)
    return steps_per_epoch(records, batch) * steps_per_round(spec)


def prompts_left_out(spec: DistillationJobSpec, records: int) -> int:
    """On-policy: the prompts of each epoch that fill no round (others each epoch, its order being its own);
    zero otherwise, every record being trained every epoch."""
    rollout = spec.rollout if spec.on_policy and not spec.mixes_policies else None
    return 0 if rollout is None else records % rollout.batch_size


def steps_per_round(spec: DistillationJobSpec) -> int:
    """On-policy: the steps one rollout round feeds, `batchSize x samplesPerPrompt / globalBatchSize`."""
    assert spec.rollout is not None
    return spec.rollout.batch_size * spec.rollout.samples_per_prompt // spec.training.global_batch_size


@dataclass(frozen=True)
class StepSamples:
    samples: list[Sample]
    generation_seconds: float = 0.0
    """Seconds spent generating them (on-policy, on a round's first step; zero otherwise)."""


class BatchSource(Protocol):
    def samples(self, epoch: int, step_in_epoch: int) -> StepSamples: ...

    def needs_new_weights(self, epoch: int, step_in_epoch: int) -> bool:
        """Whether the batch at this position depends on the weights trained up to the step before it."""
        ...

    def trains_own_samples(self, epoch: int, step_in_epoch: int) -> bool:
        """Whether the batch at this position is the student's own samples rather than the dataset's
        responses (each step's `on_policy` in metrics.jsonl)."""
        ...

    def resumable_at(self, step_in_epoch: int) -> bool:
        """Whether a checkpoint taken before this position can be resumed exactly."""
        ...


class EpochSamples:
    """The samples each epoch trains on, as indices into the training samples: all of them, or with a
    mixture (spec.data.mixture, whose sources' samples lie end to end) what each source supplies that epoch.
    The last epoch's are kept: a step asks for them again and again."""

    def __init__(self, count: int, mixture: Mixture | None) -> None:
        self._count = count
        self._mixture = mixture
        self._epoch = -1
        self._chosen: list[int] = []

    def __call__(self, epoch: int) -> list[int]:
        if self._mixture is None:
            return list(range(self._count))
        if epoch != self._epoch:
            self._chosen, self._epoch = self._mixture.epoch(epoch), epoch
        return self._chosen


class DatasetBatches:
    def __init__(
        self, samples: list[Sample], global_batch_size: int, seed: int, mixture: Mixture | None = None
    ) -> None:
        self._samples = samples
        self._epoch_samples = EpochSamples(len(samples), mixture)
        self._size = global_batch_size
        self._seed = seed
        self._epoch = -1
        self._batches: list[list[int]] = []
        self._width = _group_width(samples)
        """Samples per group: 2 for preference pairs, which are shuffled and batched as one (a global batch
        counts their sequences); 1 for samples on their own."""

    def samples(self, epoch: int, step_in_epoch: int) -> StepSamples:
        if epoch != self._epoch:
            chosen, width = self._epoch_samples(epoch), self._width
            batches = global_batches(len(chosen) // width, self._size // width, self._seed, epoch)
            self._batches = [
                [chosen[u * width + k] for u in batch for k in range(width)] for batch in batches
            ]
            self._epoch = epoch
        return StepSamples([self._samples[i] for i in self._batches[step_in_epoch]])

    def needs_new_weights(self, epoch: int, step_in_epoch: int) -> bool:
        del epoch, step_in_epoch
        return False

    def trains_own_samples(self, epoch: int, step_in_epoch: int) -> bool:
        del epoch, step_in_epoch
        return False

    def resumable_at(self, step_in_epoch: int) -> bool:
        del step_in_epoch
        return True


def _group_width(samples: list[Sample]) -> int:
    """How many samples each group of the training set holds (they lie end to end, `data.preference`); 1
    when they have none. Groups of unequal sizes cannot be batched by count."""
    widths = {len(unit) for unit in groups_of(samples)}
    if len(widths) > 1:
        raise ValueError(f"the training samples' groups have sizes {sorted(widths)}; batching needs one size")
    return widths.pop() if widths else 1


@dataclass(frozen=True)
class Round:
    epoch: int
    index: int
    sequences: list[Sample]
    seconds: float


class RolloutBatches:
    """On-policy: each round samples `rollout.samplesPerPrompt` responses to `rollout.batchSize` prompts with
    the student's current weights, and feeds `batchSize x samplesPerPrompt / globalBatchSize` steps."""

    def __init__(
        self,
        prompts: list[Sample],
        job: DistillationJob,
        rollout: RolloutActorGroup,
        max_length: int,
        turn: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        on_round: Callable[[int, list[Sample], list[list[int]]], None] | None = None,
        mixture: Mixture | None = None,
    ) -> None:
        spec = job.spec
        assert spec.rollout is not None
        self._prompts = prompts
        self._epoch_prompts = EpochSamples(len(prompts), mixture)
        """With a mixture (spec.data.mixture), the prompts each epoch draws from its sources."""
        self._rollout = rollout
        self._spec = spec
        self._max_length = max_length
        self._turn = turn
        """Entered around generation: colocated, it is the rollout engines' turn on the GPUs."""
        self._on_round = on_round
        """Given each round as sampled: the first step trained on it, each response's prompt, the
        responses."""
        self._global = spec.training.global_batch_size
        self.steps_per_round = steps_per_round(spec)
        self.rounds_per_epoch = steps_per_epoch(len(prompts), spec.rollout.batch_size)
        self._round: Round | None = None
        """The round the current steps train on: the only one kept."""
        own_tokens = any(prompt.teacher_target_spans is not None for prompt in prompts)
        self._retokenize = Retokenizer.for_job(job) if own_tokens else None
        """A teacher with its own tokenizer: what gives it each response in its tokens."""

    def samples(self, epoch: int, step_in_epoch: int) -> StepSamples:
        index, within = divmod(step_in_epoch, self.steps_per_round)
        seconds = 0.0
        if self._round is None or (self._round.epoch, self._round.index) != (epoch, index):
            self._round = self._generate(epoch, index)
            seconds = self._round.seconds
        return StepSamples(
            self._round.sequences[within * self._global : (within + 1) * self._global], seconds
        )

    def needs_new_weights(self, epoch: int, step_in_epoch: int) -> bool:
        """A round's first step: its samples come from the student's weights after the last round."""
        del epoch
        return step_in_epoch % self.steps_per_round == 0

    def trains_own_samples(self, epoch: int, step_in_epoch: int) -> bool:
        del epoch, step_in_epoch
        return True

    def resumable_at(self, step_in_epoch: int) -> bool:
        # Inside a round, the samples came from weights a checkpoint no longer holds.
        return step_in_epoch % self.steps_per_round == 0

    def _generate(self, epoch: int, index: int) -> Round:
        rollout = self._spec.rollout
        assert rollout is not None
        prompts = self._round_prompts(epoch, index)
        started = time.perf_counter()
        with self._turn():
            responses = self._generate_responses(prompts, epoch, index)
        answered = [p for p in prompts for _ in range(rollout.samples_per_prompt)]
        if self._on_round is not None:
            first_step = (epoch * self.rounds_per_epoch + index) * self.steps_per_round + 1
            self._on_round(first_step, answered, responses)
        sequences = [
            with_response(prompt, response, self._max_length, self._retokenize)
            for prompt, response in zip(answered, responses, strict=True)
        ]
        if self._spec.mode == Mode.REINFORCEMENT:
            # GRPO compares the answers to one prompt with each other: they are a group, kept whole in one
            # micro-batch (`Sample.group`); the engines answer prompt by prompt, samplesPerPrompt each.
            sequences = [
                replace(sample, group=position // rollout.samples_per_prompt)
                for position, sample in enumerate(sequences)
            ]
        if self._retokenize is not None:
            aligned, targets, unaligned = alignment_counts(sequences)
            log.info(
                "the teacher's tokens of the generated responses: %d of %d targets aligned exactly, %d of %d "
                "responses with none",
                aligned,
                targets,
                unaligned,
                len(sequences),
            )
        cut = [sample for sample in sequences if sample.truncation]
        if cut:
            log.warning(
                "%d of %d generated responses were cut; the first: %s: %s",
                len(cut),
                len(sequences),
                cut[0].source,
                cut[0].truncation,
            )
        return Round(epoch, index, sequences, time.perf_counter() - started)

    def _round_prompts(self, epoch: int, index: int) -> list[Sample]:
        rollout = self._spec.rollout
        assert rollout is not None
        drawn = self._epoch_prompts(epoch)
        chosen = global_batches(len(drawn), rollout.batch_size, self._spec.training.seed, epoch)[index]
        return [self._prompts[drawn[i]] for i in chosen]

    def _generate_responses(self, prompts: list[Sample], epoch: int, index: int) -> list[list[int]]:
        rollout = self._spec.rollout
        assert rollout is not None
        images = [p.images for p in prompts] if any(p.images is not None for p in prompts) else None
        return self._rollout.generate(
            [p.input_ids.tolist() for p in prompts],
            SamplingConfig(
                max_new_tokens=rollout.max_new_tokens,
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                samples_per_prompt=rollout.samples_per_prompt,
                # A round's samples depend on the seed and the weights only, so a resumed job redraws them.
                seed=self._spec.training.seed + epoch * self.rounds_per_epoch + index,
            ),
            images,
        )


LMBDA_DRAWS = 0x6C6D6264
"""Mixed into the seed of the per-step draw (spec.rollout.lmbda), so it is a stream of its own, apart from
the shuffles that use (seed, epoch)."""


def on_policy_step(seed: int, epoch: int, step_in_epoch: int, lmbda: float) -> bool:
    """Whether the step at this position trains on the student's own samples: with probability `lmbda`, as
    TRL GKD draws each step (`random.random() <= self.lmbda`, trl/experimental/gkd/gkd_trainer.py:416 @ TRL
    1.16.0), but a pure function of the position, so a resumed job decides every step as before."""
    if lmbda >= 1.0:
        return True
    return bool(np.random.default_rng([LMBDA_DRAWS, seed, epoch, step_in_epoch]).random() < lmbda)


def prompt_of(sample: Sample) -> Sample:
    """A dataset sample's prompt as an on-policy step reads it: everything before its last response (the last
    run of targets), which the student answers instead. TRL GKD prompts the same way: the chat but its last
    message, with the generation prompt (DataCollatorForChatML, trl/experimental/utils.py:298-300)."""
    start = _last_run_start(sample.target_mask)
    teacher_ids = teacher_mask = None
    if sample.teacher_input_ids is not None:
        assert sample.teacher_target_mask is not None, "a teacher's own sequence has its own targets"
        teacher_ids = sample.teacher_input_ids[: _last_run_start(sample.teacher_target_mask)]
        teacher_mask = np.zeros(len(teacher_ids), dtype=bool)
    return Sample(
        input_ids=sample.input_ids[:start],
        target_mask=np.zeros(start, dtype=bool),
        source=sample.source,
        prompt_length=start,
        teacher_input_ids=teacher_ids,
        teacher_target_mask=teacher_mask,
        images=sample.images,
    )


def _last_run_start(mask: np.ndarray) -> int:
    targets = np.flatnonzero(mask)
    assert len(targets), "a training sample has targets"
    breaks = np.flatnonzero(np.diff(targets) > 1)
    return int(targets[breaks[-1] + 1] if len(breaks) else targets[0])


TeacherSampler = Callable[[list[list[int]], SamplingConfig, list[ImageInputs | None] | None], list[list[int]]]
"""The teacher's engines answering prompts (`generate_on` its actors): sequence-level KD."""


class MixedBatches(RolloutBatches):
    """spec.rollout.lmbda below 1: every step is the dataset's global batch at its position (as
    `DatasetBatches`); a step drawn on-policy (`on_policy_step`) instead trains on the student's answers to
    that batch's first rollout.batchSize prompts (`prompt_of`), sampled with the weights trained up to it:
    one rollout round per on-policy step (a rule makes batchSize x samplesPerPrompt the global batch), so the
    rollout engines take the weights only before an on-policy step, and any step can be resumed exactly.
    With `teacher` (spec.rollout.sequenceKd) the other steps train on the teacher's answers to their batch's
    prompts instead of the dataset's, sampled as the step comes (TRL GKD's seq_kd, gkd_trainer.py:431-444)."""

    def __init__(
        self,
        samples: list[Sample],
        job: DistillationJob,
        rollout: RolloutActorGroup,
        max_length: int,
        turn: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        on_round: Callable[[int, list[Sample], list[list[int]]], None] | None = None,
        mixture: Mixture | None = None,
        teacher: TeacherSampler | None = None,
        teacher_turn: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        if any(sample.teacher_target_spans is not None for sample in samples):
            raise SpecError(
                "spec.rollout.lmbda",
                "below 1 is not supported with a teacher that has its own tokenizer; set it to 1",
            )
        super().__init__(samples, job, rollout, max_length, turn, on_round, mixture)
        spec = job.spec
        assert spec.rollout is not None and self.steps_per_round == 1
        self._lmbda = spec.rollout.lmbda
        self._seed = spec.training.seed
        self._dataset = DatasetBatches(samples, spec.training.global_batch_size, spec.training.seed, mixture)
        # A round per step: its first step's number and its sampling seed count steps, not rounds.
        self.rounds_per_epoch = batches_per_epoch(len(samples), spec.training.global_batch_size)
        self._teacher = teacher
        self._teacher_turn = teacher_turn
        """Entered around the teacher's sampling: colocated, it is the teacher's turn on the GPUs."""
        self._answers: tuple[tuple[int, int], StepSamples] | None = None
        """The teacher's answers of the step asked for last (a step asks for its batch again when retried)."""

    def samples(self, epoch: int, step_in_epoch: int) -> StepSamples:
        if self.trains_own_samples(epoch, step_in_epoch):
            return super().samples(epoch, step_in_epoch)
        if self._teacher is None:
            return self._dataset.samples(epoch, step_in_epoch)
        if self._answers is None or self._answers[0] != (epoch, step_in_epoch):
            self._answers = (epoch, step_in_epoch), self._teachers_answers(epoch, step_in_epoch)
        return self._answers[1]

    def needs_new_weights(self, epoch: int, step_in_epoch: int) -> bool:
        return self.trains_own_samples(epoch, step_in_epoch)

    def trains_own_samples(self, epoch: int, step_in_epoch: int) -> bool:
        return on_policy_step(self._seed, epoch, step_in_epoch, self._lmbda)

    def resumable_at(self, step_in_epoch: int) -> bool:
        del step_in_epoch
        return True

    def _round_prompts(self, epoch: int, index: int) -> list[Sample]:
        rollout = self._spec.rollout
        assert rollout is not None
        batch = self._dataset.samples(epoch, index).samples
        return [prompt_of(sample) for sample in batch[: rollout.batch_size]]

    def _teachers_answers(self, epoch: int, step_in_epoch: int) -> StepSamples:
        """Every prompt of the step's batch answered once by the teacher, as TRL's seq_kd answers the batch,
        from the prompt the teacher sees (its own where it has one); the answer is both models' target."""
        rollout = self._spec.rollout
        assert rollout is not None and self._teacher is not None
        prompts = [prompt_of(sample) for sample in self._dataset.samples(epoch, step_in_epoch).samples]
        asked = [
            (p.input_ids if p.teacher_input_ids is None else p.teacher_input_ids).tolist() for p in prompts
        ]
        images = [p.images for p in prompts] if any(p.images is not None for p in prompts) else None
        step = epoch * self.rounds_per_epoch + step_in_epoch
        sampling = SamplingConfig(
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            samples_per_prompt=1,
            seed=self._seed + step,
        )
        started = time.perf_counter()
        with self._teacher_turn():
            responses = self._teacher(asked, sampling, images)
        if self._on_round is not None:
            self._on_round(step + 1, prompts, responses)
        sequences = [
            with_response(prompt, response, self._max_length)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return StepSamples(sequences, time.perf_counter() - started)


def with_response(
    prompt: Sample, response: list[int], max_length: int, retokenize: Retokenizer | None = None
) -> Sample:
    """A prompt-only sample completed by a generated response, whose tokens become the targets. A teacher
    with its own (privileged) prompt gets the same response tokens after it, so the i-th target of each
    side is the same token; a teacher with its own tokenizer gets the response's text in its tokens
    (`retokenize`, `data.retokenize`)."""
    room = max(1, max_length - len(prompt.input_ids))
    notes = []
    if len(response) > room:
        notes.append(f"the response's last {len(response) - room} tokens cut to fit maxLength {max_length}")
    response = response[:room] or response[:1]
    if prompt.images is not None and prompt.images.image_token_id in response:
        # An engine that does not keep from sampling image placeholders (a response is text; nothing would
        # stand behind the token): the response ends before the first.
        at = response.index(prompt.images.image_token_id)
        notes.append(f"the response cut at token {at}, an image placeholder the engine sampled")
        response = response[:at]
    generated = np.asarray(response, dtype=np.int32)
    teacher_ids = teacher_mask = None
    own_tokens = prompt.teacher_target_spans is not None
    if prompt.teacher_input_ids is not None and not own_tokens:
        teacher_ids = np.concatenate([prompt.teacher_input_ids, generated])
        teacher_mask = np.arange(len(teacher_ids)) >= len(prompt.teacher_input_ids)
    completed = Sample(
        input_ids=np.concatenate([prompt.input_ids, generated]),
        target_mask=np.arange(len(prompt.input_ids) + len(response)) >= len(prompt.input_ids),
        source=f"{prompt.source} (rollout)",
        prompt_length=len(prompt.input_ids),
        teacher_input_ids=teacher_ids,
        teacher_target_mask=teacher_mask,
        truncation="; ".join(notes) or None,
        images=prompt.images,
    )
    if own_tokens:
        assert retokenize is not None, "a teacher with its own tokenizer reads the response retokenised"
        return retokenize(prompt, completed)
    return completed
