"""Rules that involve more than one field of the spec.

Each rule is written twice over the same data, once as a Python predicate (used by the operator, the
runtime and `kubedistill validate`) and once as a CEL expression (placed in the CRD, so the API server rejects
the manifest on `kubectl apply`). The tests evaluate both on every example and on every bad manifest, so
the two cannot drift apart. CEL reads a field through `value()`, which substitutes the pydantic default when
the field is left out: the default is stated once, in the model.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kubedistill.api.base import model_in
from kubedistill.api.generation import (
    ANSWER_STEPS,
    INSTRUCTION_STEPS,
    PLACEHOLDERS,
    GenerationStep,
    ScoreFrom,
    StepKind,
    teacher_generates,
    template_fits,
)
from kubedistill.api.spec import (
    Attention,
    Backend,
    DataFormat,
    DataSource,
    DistillationJobSpec,
    DskdProjectorInit,
    LrScheduler,
    Mode,
    TeacherSpec,
)

RENDER_ARGUMENTS = ("messages", "tools", "documents", "add_generation_prompt", "continue_final_message")
"""What a chat template is rendered with by transformers' `apply_chat_template` itself (4.5x-5.x: these are
its arguments and the template's variables), so spec.data.chatTemplateKwargs cannot set them."""


@dataclass(frozen=True)
class Problem:
    path: str
    """Field path from the manifest's root, e.g. `spec.rollout`."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Rule:
    field: str
    """The field the message is about, relative to spec."""
    message: str
    holds: Callable[[DistillationJobSpec], bool]
    cel: str
    """The same predicate in CEL, `self` being the spec."""

    @property
    def problem(self) -> Problem:
        return Problem(f"spec.{self.field}", self.message)


def value(path: str) -> str:
    """CEL for the value at `path` (dotted, from spec), or its default where it or a parent is unset."""
    return f"({present(path)} ? self.{path} : {_cel_literal(default_at(path))})"


def present(path: str) -> str:
    """CEL that is true where the field at `path` and all its parents are set."""
    parts = path.split(".")
    return "(" + " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts))) + ")"


def default_at(path: str) -> Any:
    model: type[BaseModel] = DistillationJobSpec
    parts = path.split(".")
    for i, alias in enumerate(parts):
        field = next(f for f in model.model_fields.values() if f.alias == alias)
        if i == len(parts) - 1:
            if field.is_required():
                raise ValueError(f"spec.{path} is required and has no default")
            return field.get_default(call_default_factory=True)
        found = model_in(field.annotation)
        if found is None:
            raise ValueError(f"spec.{'.'.join(parts[: i + 1])} is not an object")
        model = found
    raise ValueError(path)


def _cel_literal(default: Any) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return f"'{default}'"
    if isinstance(default, int):
        return str(default)
    if isinstance(default, float):
        return repr(default)
    raise ValueError(f"no CEL literal for default {default!r}")


def _mode_is(*modes: Mode) -> str:
    return f"{value('mode')} in [{', '.join(repr(str(m)) for m in modes)}]"


def _training_sources(spec: DistillationJobSpec) -> list[DataSource]:
    return [source for _, source in spec.data.training_sources]


def _on_policy() -> str:
    """CEL twin of `DistillationJobSpec.on_policy`."""
    return (
        f"({value('mode')} == 'onPolicy' || {value('mode')} == 'reinforcement' "
        f"|| ({value('mode')} == 'selfDistillation' && has(self.rollout)))"
    )


def _gpus_per_teacher_node(spec: DistillationJobSpec) -> int:
    teacher = spec.teacher or TeacherSpec()
    return teacher.gpus_per_replica // teacher.nodes_per_replica


def _teacher_gpus(spec: DistillationJobSpec) -> int:
    teacher = spec.teacher or TeacherSpec()
    return teacher.replicas * teacher.gpus_per_replica


def _each_teacher(cel: str) -> str:
    """CEL over spec.teacher's settings, said of the list item `t` of spec.teachers instead."""
    return cel.replace("has(self.teacher)", "true").replace("self.teacher.", "t.")


_COLOCATED_TEACHER_GPUS = (
    f"{value('teacher.replicas')} * {value('teacher.gpusPerReplica')} == {value('student.replicas')}"
)
"""CEL twin of `_teacher_gpus(spec) == spec.student.replicas`."""


def _source_default(alias: str) -> Any:
    """The default of a data source's field (`DataSource`), for CEL over spec.data.mixture's items."""
    field = next(f for f in DataSource.model_fields.values() if f.alias == alias)
    return field.get_default(call_default_factory=True)


def _every_training_source_has_teacher_input(spec: DistillationJobSpec) -> bool:
    sources = spec.data.training_sources
    return bool(sources) and all(source.teacher_input_key is not None for _, source in sources)


def _every_training_source_has(alias: str) -> str:
    """CEL twin of `_every_training_source_has_teacher_input` for the field `alias`."""
    return (
        f"({present('data.train.' + alias)} || "
        f"({present('data.mixture')} && self.data.mixture.all(m, has(m.{alias}))))"
    )


def _every_step(spec: DistillationJobSpec, holds: Callable[[GenerationStep], bool]) -> bool:
    return spec.generation is None or all(holds(step) for step in spec.generation.steps)


def _every_step_cel(cel: str) -> str:
    """CEL over each item `t` of spec.generation.steps."""
    return f"!{present('generation.steps')} || self.generation.steps.all(t, {cel})"


def _step_value(alias: str) -> str:
    """CEL for a step's field `alias`, or its default (`GenerationStep`)."""
    field = next(f for f in GenerationStep.model_fields.values() if f.alias == alias)
    return f"(has(t.{alias}) ? t.{alias} : {_cel_literal(str(field.get_default()))})"


def _template_fits_cel() -> str:
    """CEL twin of `template_fits` for the step `t`, kind by kind."""
    every = {name for names in PLACEHOLDERS.values() for name in names}
    cases = [
        f"t.kind == '{kind}' && t.template.contains('{{{allowed[-1]}}}')"
        + "".join(f" && !t.template.contains('{{{name}}}')" for name in sorted(every - set(allowed)))
        for kind, allowed in PLACEHOLDERS.items()
    ]
    return "(" + " || ".join(f"({case})" for case in cases) + ")"


def _source_keys_pair(source_path: str) -> Rule:
    def holds(spec: DistillationJobSpec) -> bool:
        source = spec.data.eval if source_path == "eval" else spec.data.train
        if source is None:
            return True
        generated = spec.on_policy or (source_path == "train" and spec.generation is not None)
        prompt_only = generated and source.response_key is None
        return (source.prompt_key is None) == (source.response_key is None) or prompt_only

    keys = f"data.{source_path}"
    generated = _on_policy()
    if source_path == "train":
        generated = f"({generated} || has(self.generation))"
    return Rule(
        f"{keys}.promptKey",
        "promptKey and responseKey go together: set both (prompt/response records) or neither (chat "
        "records); onPolicy (or selfDistillation with a rollout section, or spec.generation for data.train) "
        "may set promptKey alone",
        holds,
        f"!{present(keys)} || {present(keys + '.promptKey')} == {present(keys + '.responseKey')}"
        f" || ({generated} && !{present(keys + '.responseKey')})",
    )


def _hub_split(source_path: str) -> Rule:
    def holds(spec: DistillationJobSpec) -> bool:
        source = spec.data.eval if source_path == "eval" else spec.data.train
        return source is None or source.format != DataFormat.HUB or source.split is not None

    keys = f"data.{source_path}"
    return Rule(
        f"{keys}.split",
        "required when format is hub (the split of the hub dataset to read, e.g. train)",
        holds,
        f"!{present(keys)} || {value(keys + '.format')} != 'hub' || {present(keys + '.split')}",
    )


_REINFORCED = f"{value('mode')} != 'reinforcement'"
"""CEL: the job is not in mode reinforcement (each of its rules holds then)."""

_REINFORCEMENT_RULES: tuple[Rule, ...] = (
    # GRPO on the student's samples with the teacher's likelihood as the reward (runtime/algorithms/grpo.py).
    Rule(
        "reinforcement",
        "only used when spec.mode is reinforcement; remove it",
        lambda s: s.reinforcement is None or s.mode == Mode.REINFORCEMENT,
        f"!has(self.reinforcement) || {value('mode')} == 'reinforcement'",
    ),
    Rule(
        "rollout",
        "required when spec.mode is reinforcement: the teacher judges the student's own samples",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is not None,
        f"{_REINFORCED} || has(self.rollout)",
    ),
    Rule(
        "teacher.model",
        "required when spec.mode is reinforcement: the teacher's likelihood of each sample is its reward",
        lambda s: s.mode != Mode.REINFORCEMENT or (s.teacher is not None and s.teacher.model is not None),
        f"{_REINFORCED} || {present('teacher.model')}",
    ),
    Rule(
        "rollout.samplesPerPrompt",
        "must be at least 2 with spec.mode reinforcement: GRPO compares the answers to one prompt, and a "
        "prompt answered once has nothing to be compared with",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is None or s.rollout.samples_per_prompt >= 2,
        f"{_REINFORCED} || !has(self.rollout) || {value('rollout.samplesPerPrompt')} >= 2",
    ),
    Rule(
        "rollout.batchSize",
        "spec.rollout.batchSize x spec.rollout.samplesPerPrompt must equal spec.training.globalBatchSize "
        "with spec.mode reinforcement: one optimizer step a round trains on samples of the current weights, "
        "so the loss needs no importance ratio to older ones",
        lambda s: (
            s.mode != Mode.REINFORCEMENT
            or s.rollout is None
            or s.rollout.batch_size * s.rollout.samples_per_prompt == s.training.global_batch_size
        ),
        f"{_REINFORCED} || !has(self.rollout) || {value('rollout.batchSize')} * "
        f"{value('rollout.samplesPerPrompt')} == {value('training.globalBatchSize')}",
    ),
    Rule(
        "rollout.lmbda",
        "must be 1 with spec.mode reinforcement: every step trains on the student's own samples",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is None or s.rollout.lmbda >= 1.0,
        f"{_REINFORCED} || !has(self.rollout) || {value('rollout.lmbda')} >= 1.0",
    ),
    Rule(
        "rollout.sequenceKd",
        "not used with spec.mode reinforcement (the teacher judges the student's answers, it writes none); "
        "remove it",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is None or not s.rollout.sequence_kd,
        f"{_REINFORCED} || !has(self.rollout) || !{value('rollout.sequenceKd')}",
    ),
    Rule(
        "rollout.temperature",
        "must be 1 with spec.mode reinforcement: GRPO's log-probabilities (the student's and the "
        "reference's) are those of the distribution the answers are sampled from",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is None or s.rollout.temperature == 1.0,
        f"{_REINFORCED} || !has(self.rollout) || {value('rollout.temperature')} == 1.0",
    ),
    Rule(
        "rollout.topP",
        "must be 1 with spec.mode reinforcement: GRPO's log-probabilities are those of the whole "
        "distribution the answers are sampled from",
        lambda s: s.mode != Mode.REINFORCEMENT or s.rollout is None or s.rollout.top_p == 1.0,
        f"{_REINFORCED} || !has(self.rollout) || {value('rollout.topP')} == 1.0",
    ),
    Rule(
        "distillation.algorithm",
        "not used with spec.mode reinforcement (its loss is GRPO's, the teacher's likelihood the reward); "
        "remove it",
        lambda s: (
            s.mode != Mode.REINFORCEMENT or s.distillation.algorithm == default_at("distillation.algorithm")
        ),
        f"{_REINFORCED} || {value('distillation.algorithm')} == "
        f"{_cel_literal(default_at('distillation.algorithm'))}",
    ),
    Rule(
        "student.contextParallel",
        "must be 1 with spec.mode reinforcement: a group of answers is one prompt's, whole on one rank",
        lambda s: s.mode != Mode.REINFORCEMENT or s.student.context_parallel == 1,
        f"{_REINFORCED} || {value('student.contextParallel')} == 1",
    ),
)


_SAMPLING_MODES = (Mode.ON_POLICY, Mode.SELF_DISTILLATION, Mode.REINFORCEMENT, Mode.PREFERENCE)
"""The modes in which the student samples answers on rollout engines (spec.rollout)."""

_NOT_PREFERENCE = f"{value('mode')} != 'preference'"
"""CEL: the job is not in mode preference (each of its rules holds then)."""


def _pair_keys(source_path: str) -> Rule:
    """Pair records are read by TRL's keys (`data.preference`): a source of pairs names no keys of its own."""

    def holds(spec: DistillationJobSpec) -> bool:
        source = spec.data.eval if source_path == "eval" else spec.data.train
        prompts = source_path == "train" and spec.generation is not None
        return spec.mode != Mode.PREFERENCE or source is None or prompts or source.prompt_key is None

    keys = f"data.{source_path}"
    prompts = " || has(self.generation)" if source_path == "train" else ""
    return Rule(
        f"{keys}.promptKey",
        "not used with spec.mode preference: pairs are read by their keys prompt, chosen and rejected "
        "(TRL's preference format); prompts to answer take it with spec.generation",
        holds,
        f"{_NOT_PREFERENCE} || !{present(keys + '.promptKey')}{prompts}",
    )


_PREFERENCE_RULES: tuple[Rule, ...] = (
    # DPO on pairs of the teacher's answer over the student's own (runtime/algorithms/dpo.py).
    Rule(
        "preference",
        "only used when spec.mode is preference; remove it",
        lambda s: s.preference is None or s.mode == Mode.PREFERENCE,
        f"!has(self.preference) || {value('mode')} == 'preference'",
    ),
    Rule(
        "rollout",
        "required when spec.mode is preference with spec.generation: the student answers the prompts "
        "before training (its rejected answers, the teacher's chosen)",
        lambda s: s.mode != Mode.PREFERENCE or s.generation is None or s.rollout is not None,
        f"{_NOT_PREFERENCE} || !has(self.generation) || has(self.rollout)",
    ),
    Rule(
        "rollout",
        "with spec.mode preference only used with spec.generation (the student's answers to its prompts); "
        "data that holds pairs is trained as it is: remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.rollout is None or s.generation is not None,
        f"{_NOT_PREFERENCE} || !has(self.rollout) || has(self.generation)",
    ),
    Rule(
        "teacher",
        "with spec.mode preference only used to write the chosen answers (spec.generation without an "
        "endpoint); the reference is the initial student: remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.teacher is None or teacher_generates(s),
        f"{_NOT_PREFERENCE} || !has(self.teacher) || (has(self.generation) && "
        "!has(self.generation.endpoint))",
    ),
    Rule(
        "rollout.samplesPerPrompt",
        "must equal spec.generation.samplesPerPrompt with spec.mode preference: the teacher's answer i to a "
        "prompt and the student's answer i make pair i",
        lambda s: (
            s.mode != Mode.PREFERENCE
            or s.rollout is None
            or s.generation is None
            or s.rollout.samples_per_prompt == s.generation.samples_per_prompt
        ),
        f"{_NOT_PREFERENCE} || !has(self.rollout) || !has(self.generation) || "
        f"{value('rollout.samplesPerPrompt')} == {value('generation.samplesPerPrompt')}",
    ),
    Rule(
        "rollout.lmbda",
        "must be 1 with spec.mode preference: the student answers every prompt once, before training",
        lambda s: s.mode != Mode.PREFERENCE or s.rollout is None or s.rollout.lmbda >= 1.0,
        f"{_NOT_PREFERENCE} || !has(self.rollout) || {value('rollout.lmbda')} >= 1.0",
    ),
    Rule(
        "rollout.sequenceKd",
        "not used with spec.mode preference (the teacher's answers are the chosen ones); remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.rollout is None or not s.rollout.sequence_kd,
        f"{_NOT_PREFERENCE} || !has(self.rollout) || !{value('rollout.sequenceKd')}",
    ),
    Rule(
        "training.globalBatchSize",
        "must be even with spec.mode preference: a global batch counts sequences, and a pair is two",
        lambda s: s.mode != Mode.PREFERENCE or s.training.global_batch_size % 2 == 0,
        f"{_NOT_PREFERENCE} || {value('training.globalBatchSize')} % 2 == 0",
    ),
    Rule(
        "data.mixture",
        "not used with spec.mode preference: a mixture draws samples one by one, and a pair is two; give "
        "the pairs as spec.data.train",
        lambda s: s.mode != Mode.PREFERENCE or s.data.mixture is None,
        f"{_NOT_PREFERENCE} || !has(self.data.mixture)",
    ),
    Rule(
        "data.train.teacherInputKey",
        "not used with spec.mode preference: no teacher runs in training (the reference is the initial "
        "student); remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.data.train is None or s.data.train.teacher_input_key is None,
        f"{_NOT_PREFERENCE} || !{present('data.train.teacherInputKey')}",
    ),
    _pair_keys("train"),
    _pair_keys("eval"),
    Rule(
        "distillation.algorithm",
        "not used with spec.mode preference (its loss is DPO's); remove it",
        lambda s: (
            s.mode != Mode.PREFERENCE or s.distillation.algorithm == default_at("distillation.algorithm")
        ),
        f"{_NOT_PREFERENCE} || {value('distillation.algorithm')} == "
        f"{_cel_literal(default_at('distillation.algorithm'))}",
    ),
    Rule(
        "student.contextParallel",
        "must be 1 with spec.mode preference: a pair's two answers are one loss, whole on one rank",
        lambda s: s.mode != Mode.PREFERENCE or s.student.context_parallel == 1,
        f"{_NOT_PREFERENCE} || {value('student.contextParallel')} == 1",
    ),
    Rule(
        "generation.topLogprobs",
        "not used with spec.mode preference: DPO trains on the answers' text, not the endpoint's "
        "log-probabilities; remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.generation is None or s.generation.top_logprobs is None,
        f"{_NOT_PREFERENCE} || !{present('generation.topLogprobs')}",
    ),
    Rule(
        "generation.scoreAnswers",
        "not used with spec.mode preference: the chosen answers are the teacher's own, which scoring the "
        "data's answers does not write; remove it",
        lambda s: s.mode != Mode.PREFERENCE or s.generation is None or not s.generation.score_answers,
        f"{_NOT_PREFERENCE} || !{value('generation.scoreAnswers')}",
    ),
)


_RULES: tuple[Rule, ...] = (
    Rule(
        "rollout",
        "required when spec.mode is onPolicy",
        lambda s: s.mode != Mode.ON_POLICY or s.rollout is not None,
        f"{value('mode')} != 'onPolicy' || has(self.rollout)",
    ),
    Rule(
        "rollout",
        "only used when spec.mode is onPolicy, selfDistillation, reinforcement or preference (the student "
        "samples the responses it learns from); remove it",
        lambda s: s.rollout is None or s.mode in _SAMPLING_MODES,
        f"!has(self.rollout) || {_mode_is(*_SAMPLING_MODES)}",
    ),
    Rule(
        "rollout",
        "with spec.mode selfDistillation the teacher would be the student itself at every step and the "
        "distillation loss zero: give the teacher a privileged prompt (spec.data.train.teacherInputKey), "
        "or let it lag behind (spec.distillation.teacherUpdateFreq > 1 or teacherEmaDecay)",
        lambda s: (
            s.mode != Mode.SELF_DISTILLATION
            or s.rollout is None
            or _every_training_source_has_teacher_input(s)
            or s.distillation.teacher_ema_decay is not None
            or s.distillation.teacher_update_freq > 1
        ),
        f"{value('mode')} != 'selfDistillation' || !has(self.rollout) || "
        f"{_every_training_source_has('teacherInputKey')} || {present('distillation.teacherEmaDecay')} || "
        f"{value('distillation.teacherUpdateFreq')} > 1",
    ),
    Rule(
        "teacher.model",
        "required when spec.mode is offPolicy or onPolicy (or give spec.teachers)",
        lambda s: (
            s.mode not in (Mode.OFF_POLICY, Mode.ON_POLICY)
            or (s.teacher is not None and s.teacher.model is not None)
            or s.teachers is not None
        ),
        f"!({_mode_is(Mode.OFF_POLICY, Mode.ON_POLICY)}) || {present('teacher.model')} || has(self.teachers)",
    ),
    Rule(
        "teachers",
        "replaces spec.teacher: give one teacher (spec.teacher) or several (spec.teachers), not both",
        lambda s: s.teachers is None or s.teacher is None,
        "!has(self.teachers) || !has(self.teacher)",
    ),
    Rule(
        "teachers",
        "only used when spec.mode is offPolicy or onPolicy (self-distillation's teacher is the student, sft "
        "has none)",
        lambda s: s.teachers is None or s.mode in (Mode.OFF_POLICY, Mode.ON_POLICY),
        f"!has(self.teachers) || {_mode_is(Mode.OFF_POLICY, Mode.ON_POLICY)}",
    ),
    Rule(
        "teachers",
        "needs spec.distillation.algorithm vanilla: the cross-tokenizer algorithms match the tokens of one "
        "teacher",
        lambda s: s.teachers is None or s.distillation.algorithm == "vanilla",
        f"!has(self.teachers) || {value('distillation.algorithm')} == 'vanilla'",
    ),
    Rule(
        "teachers",
        "cannot write spec.generation's responses (one teacher writes them): give spec.teacher, or an "
        "endpoint with spec.mode sft",
        lambda s: s.teachers is None or s.generation is None,
        "!has(self.teachers) || !has(self.generation)",
    ),
    Rule(
        "teacher",
        "not used when spec.mode is sft (training on the data alone) unless it generates the responses "
        "(spec.generation without an endpoint); remove it",
        lambda s: s.mode != Mode.SFT or s.teacher is None or teacher_generates(s),
        f"{value('mode')} != 'sft' || !has(self.teacher) || (has(self.generation) && "
        "!has(self.generation.endpoint))",
    ),
    Rule(
        "generation",
        "only used when spec.mode is sft, offPolicy or preference (training on the generated responses); "
        "remove it",
        lambda s: s.generation is None or s.mode in (Mode.SFT, Mode.OFF_POLICY, Mode.PREFERENCE),
        f"!has(self.generation) || {_mode_is(Mode.SFT, Mode.OFF_POLICY, Mode.PREFERENCE)}",
    ),
    Rule(
        "generation.endpoint",
        "offPolicy needs the teacher's hidden states on the responses, which an endpoint does not return: "
        "use spec.mode sft with an endpoint, or remove the endpoint so that spec.teacher generates",
        lambda s: s.generation is None or s.generation.endpoint is None or s.mode != Mode.OFF_POLICY,
        f"!{present('generation.endpoint')} || {value('mode')} != 'offPolicy'",
    ),
    Rule(
        "teacher.model",
        "required when spec.generation has no endpoint (the job's teacher writes the responses)",
        lambda s: not teacher_generates(s) or (s.teacher is not None and s.teacher.model is not None),
        f"!has(self.generation) || has(self.generation.endpoint) || {present('teacher.model')}",
    ),
    Rule(
        "generation.topLogprobs",
        "asks an endpoint for its log-probabilities; set spec.generation.endpoint, or remove topLogprobs "
        "(the job's own teacher gives its hidden states to mode offPolicy instead)",
        lambda s: (
            s.generation is None or s.generation.top_logprobs is None or s.generation.endpoint is not None
        ),
        f"!{present('generation.topLogprobs')} || {present('generation.endpoint')}",
    ),
    Rule(
        "generation.scoreAnswers",
        "asks an endpoint to score the data's answers with its log-probabilities: it needs "
        "spec.generation.endpoint and topLogprobs, and samplesPerPrompt 1 (one answer per record)",
        lambda s: (
            s.generation is None
            or not s.generation.score_answers
            or (
                s.generation.endpoint is not None
                and s.generation.top_logprobs is not None
                and s.generation.samples_per_prompt == 1
            )
        ),
        f"!{value('generation.scoreAnswers')} || ({present('generation.endpoint')} && "
        f"{present('generation.topLogprobs')} && {value('generation.samplesPerPrompt')} == 1)",
    ),
    Rule(
        "generation.steps",
        "each step's template uses the placeholder its kind works on and none of another kind's: "
        "{examples} for instructionExpansion, {instruction} for instructionRefinement and chainOfThought, "
        "{answer} (and {instruction}) for longToShort, shortToLong and judge",
        lambda s: _every_step(
            s, lambda step: step.template is None or template_fits(step.kind, step.template)
        ),
        _every_step_cel(f"!has(t.template) || {_template_fits_cel()}"),
    ),
    Rule(
        "generation.steps",
        "a step takes template or templateFile, not both",
        lambda s: _every_step(s, lambda step: step.template is None or step.template_file is None),
        _every_step_cel("!has(t.template) || !has(t.templateFile)"),
    ),
    Rule(
        "generation.steps",
        "a judge step needs threshold (records scored below it are dropped; scores run from 0 to 9)",
        lambda s: _every_step(s, lambda step: step.kind != StepKind.JUDGE or step.threshold is not None),
        _every_step_cel("t.kind != 'judge' || has(t.threshold)"),
    ),
    Rule(
        "generation.steps",
        "at most one chainOfThought step: it is how the answers are asked for",
        lambda s: (
            s.generation is None or sum(t.kind == StepKind.CHAIN_OF_THOUGHT for t in s.generation.steps) < 2
        ),
        f"!{present('generation.steps')} || "
        "self.generation.steps.filter(t, t.kind == 'chainOfThought').size() < 2",
    ),
    Rule(
        "generation.steps",
        "a judge with scoreFrom logprobs reads an endpoint's top_logprobs: set spec.generation.endpoint (the "
        "job's own teacher gives text only)",
        lambda s: _every_step(
            s,
            lambda step: (
                step.score_from != ScoreFrom.LOGPROBS
                or s.generation is None
                or s.generation.endpoint is not None
            ),
        ),
        _every_step_cel(f"{_step_value('scoreFrom')} != 'logprobs' || {present('generation.endpoint')}"),
    ),
    Rule(
        "generation.steps",
        "steps make prompts and answers of their own, which spec.generation.scoreAnswers (the data's "
        "answers, scored) cannot take: remove one",
        lambda s: s.generation is None or not s.generation.steps or not s.generation.score_answers,
        f"!{present('generation.steps')} || self.generation.steps.size() == 0 || "
        f"!{value('generation.scoreAnswers')}",
    ),
    Rule(
        "generation.steps",
        "longToShort, shortToLong and judge read answers as text, and spec.generation.topLogprobs keeps each "
        "answer's log-probabilities, which a rewrite would not match: remove one",
        lambda s: _every_step(
            s,
            lambda step: (
                step.kind not in ANSWER_STEPS or s.generation is None or s.generation.top_logprobs is None
            ),
        ),
        _every_step_cel(
            f"!(t.kind in [{', '.join(repr(str(k)) for k in ANSWER_STEPS)}]) || "
            f"!{present('generation.topLogprobs')}"
        ),
    ),
    Rule(
        "generation.steps",
        "instructionExpansion and instructionRefinement write prompts of their own, which the teacher's "
        "input of spec.data.train.teacherInputKey (written for each original prompt) would not match: remove "
        "one",
        lambda s: _every_step(
            s,
            lambda step: (
                step.kind not in INSTRUCTION_STEPS
                or s.data.train is None
                or s.data.train.teacher_input_key is None
            ),
        ),
        _every_step_cel(
            f"!(t.kind in [{', '.join(repr(str(k)) for k in INSTRUCTION_STEPS)}]) || "
            f"!{present('data.train.teacherInputKey')}"
        ),
    ),
    Rule(
        "distillation.algorithm",
        "sparseKd trains on a hosted teacher's stored log-probabilities: it needs spec.mode sft and "
        "spec.generation.topLogprobs (with spec.generation.endpoint)",
        lambda s: (
            s.distillation.algorithm != "sparseKd"
            or (s.mode == Mode.SFT and s.generation is not None and s.generation.top_logprobs is not None)
        ),
        f"{value('distillation.algorithm')} != 'sparseKd' || ({_mode_is(Mode.SFT)} && "
        f"{present('generation.topLogprobs')})",
    ),
    Rule(
        "distillation.temperature",
        "must be 1 with spec.distillation.algorithm sparseKd: the stored log-probabilities are compared as "
        "the endpoint returned them",
        lambda s: s.distillation.algorithm != "sparseKd" or s.distillation.temperature == 1.0,
        f"{value('distillation.algorithm')} != 'sparseKd' || {value('distillation.temperature')} == 1.0",
    ),
    Rule(
        "distillation.lossAddTail",
        "only shapes spec.distillation.algorithm sparseKd's loss; remove it, or use sparseKd",
        lambda s: s.distillation.loss_add_tail or s.distillation.algorithm == "sparseKd",
        f"{value('distillation.lossAddTail')} || {value('distillation.algorithm')} == 'sparseKd'",
    ),
    Rule(
        "data.applyChatTemplate",
        "must be true with spec.generation: the generated records are chats",
        lambda s: s.generation is None or s.data.apply_chat_template,
        f"!has(self.generation) || {value('data.applyChatTemplate')}",
    ),
    Rule(
        "data.chatTemplate",
        "needs spec.data.applyChatTemplate: true (plain text is not rendered through a template)",
        lambda s: s.data.chat_template is None or s.data.apply_chat_template,
        f"!{present('data.chatTemplate')} || {value('data.applyChatTemplate')}",
    ),
    Rule(
        "data.chatTemplateKwargs",
        "needs spec.data.applyChatTemplate: true (plain text is not rendered through a template)",
        lambda s: not s.data.chat_template_kwargs or s.data.apply_chat_template,
        f"!{present('data.chatTemplateKwargs')} || size(self.data.chatTemplateKwargs) == 0 "
        f"|| {value('data.applyChatTemplate')}",
    ),
    Rule(
        "data.chatTemplateKwargs",
        f"must not set what the chat is rendered with ({', '.join(RENDER_ARGUMENTS)}): those come from "
        "the records and the mode",
        lambda s: not set(s.data.chat_template_kwargs) & set(RENDER_ARGUMENTS),
        f"!{present('data.chatTemplateKwargs')} "
        f"|| !self.data.chatTemplateKwargs.exists(k, k in {list(RENDER_ARGUMENTS)})",
    ),
    Rule(
        "generation.maxNewTokens",
        "must be less than spec.data.maxLength (prompt and response share it)",
        lambda s: s.generation is None or s.generation.max_new_tokens < s.data.max_length,
        f"!has(self.generation) || {value('generation.maxNewTokens')} < {value('data.maxLength')}",
    ),
    Rule(
        "teacher.model",
        "must equal spec.student.model (or be left out) when spec.mode is selfDistillation",
        lambda s: (
            s.mode != Mode.SELF_DISTILLATION
            or s.teacher is None
            or s.teacher.model in (None, s.student.model)
        ),
        f"{value('mode')} != 'selfDistillation' || !{present('teacher.model')}"
        " || self.teacher.model == self.student.model",
    ),
    Rule(
        "teacher.gpusPerReplica",
        "must be a multiple of spec.teacher.tensorParallel x spec.teacher.pipelineParallel",
        lambda s: (
            s.teacher is None
            or s.teacher.gpus_per_replica % (s.teacher.tensor_parallel * s.teacher.pipeline_parallel) == 0
        ),
        f"{value('teacher.gpusPerReplica')} % "
        f"({value('teacher.tensorParallel')} * {value('teacher.pipelineParallel')}) == 0",
    ),
    Rule(
        "teacher.nodesPerReplica",
        "must divide spec.teacher.gpusPerReplica (every node of a replica gets the same number of GPUs)",
        lambda s: s.teacher is None or s.teacher.gpus_per_replica % s.teacher.nodes_per_replica == 0,
        f"{value('teacher.gpusPerReplica')} % {value('teacher.nodesPerReplica')} == 0",
    ),
    Rule(
        "teacher.expertParallel",
        "must divide spec.teacher.tensorParallel",
        lambda s: s.teacher is None or s.teacher.tensor_parallel % s.teacher.expert_parallel == 0,
        f"{value('teacher.tensorParallel')} % {value('teacher.expertParallel')} == 0",
    ),
    Rule(
        "teacher.backend",
        "transformers runs one process per teacher replica: tensorParallel, pipelineParallel, "
        "expertParallel and nodesPerReplica must be 1 (use sglang for a parallel teacher)",
        lambda s: (
            s.teacher is None
            or s.teacher.backend != Backend.TRANSFORMERS
            or (
                s.teacher.tensor_parallel,
                s.teacher.pipeline_parallel,
                s.teacher.expert_parallel,
                s.teacher.nodes_per_replica,
            )
            == (1, 1, 1, 1)
        ),
        f"{value('teacher.backend')} != 'transformers' || ({value('teacher.tensorParallel')} == 1"
        f" && {value('teacher.pipelineParallel')} == 1 && {value('teacher.expertParallel')} == 1"
        f" && {value('teacher.nodesPerReplica')} == 1)",
    ),
    Rule(
        "teacher.pipelineParallel",
        "must be 1 with the sglang backend: a pipeline-parallel SGLang engine returns no hidden states (its "
        "last stage relays only token ids and logprobs to the first); span nodes with tensor parallelism "
        "instead (tensorParallel = gpusPerReplica, nodesPerReplica > 1)",
        # SGLang 0.5.23: the first stage rebuilds its output from the last stage's relay with
        # hidden_states=None ("Do not send logits and hidden states because they are large",
        # `srt/managers/utils.py:342-359`, called at `srt/managers/scheduler_pp_mixin.py:988`). Tensor
        # parallelism spans nodes: `_calculate_rank_ranges` gives each node tp_size / nnodes ranks
        # (`srt/entrypoints/engine.py:2061-2077`).
        lambda s: (
            s.teacher is None or s.teacher.backend == Backend.TRANSFORMERS or s.teacher.pipeline_parallel == 1
        ),
        f"{value('teacher.backend')} == 'transformers' || {value('teacher.pipelineParallel')} == 1",
    ),
    Rule(
        "teacher.quantization",
        "needs spec.teacher.backend sglang or auto (the transformers backend does not quantize)",
        lambda s: (
            s.teacher is None or s.teacher.quantization is None or s.teacher.backend != Backend.TRANSFORMERS
        ),
        f"!{present('teacher.quantization')} || {value('teacher.backend')} != 'transformers'",
    ),
    Rule(
        "teacher.gpusPerReplica",
        "must equal spec.teacher.tensorParallel x spec.teacher.pipelineParallel on one node when "
        "spec.mode is selfDistillation: SGLang loads new weights only into an engine without data "
        "parallelism on a single node (or set spec.teacher.backend: transformers)",
        lambda s: (
            s.mode != Mode.SELF_DISTILLATION
            or s.teacher is None
            or s.teacher.backend == Backend.TRANSFORMERS
            or (
                s.teacher.gpus_per_replica == s.teacher.tensor_parallel * s.teacher.pipeline_parallel
                and s.teacher.nodes_per_replica == 1
            )
        ),
        f"{value('mode')} != 'selfDistillation' || !has(self.teacher) || {value('teacher.backend')} == "
        f"'transformers' || ({value('teacher.gpusPerReplica')} == {value('teacher.tensorParallel')} * "
        f"{value('teacher.pipelineParallel')} && {value('teacher.nodesPerReplica')} == 1)",
    ),
    Rule(
        "teacher.gpusPerReplica",
        "spec.teacher.gpusPerReplica / spec.teacher.nodesPerReplica (GPUs per teacher pod) must be at most "
        "spec.cluster.gpusPerNode",
        lambda s: _gpus_per_teacher_node(s) <= s.cluster.gpus_per_node,
        f"{value('teacher.gpusPerReplica')} / {value('teacher.nodesPerReplica')}"
        f" <= {value('cluster.gpusPerNode')}",
    ),
    Rule(
        "training.globalBatchSize",
        "must be a multiple of spec.training.microBatchSize x spec.student.replicas",
        lambda s: (
            s.training.max_tokens_per_device is not None
            or s.training.global_batch_size % (s.training.micro_batch_size * s.student.replicas) == 0
        ),
        f"{present('training.maxTokensPerDevice')} || {value('training.globalBatchSize')} % "
        f"({value('training.microBatchSize')} * {value('student.replicas')}) == 0",
    ),
    Rule(
        "training.globalBatchSize",
        "must be a multiple of spec.student.replicas",
        lambda s: s.training.global_batch_size % s.student.replicas == 0,
        f"{value('training.globalBatchSize')} % {value('student.replicas')} == 0",
    ),
    Rule(
        "training.minLearningRate",
        "must be at most spec.training.learningRate: it is the floor the schedule decays to from that peak, "
        "and a floor above the peak would raise the rate instead",
        lambda s: s.training.min_learning_rate <= s.training.learning_rate,
        f"{value('training.minLearningRate')} <= {value('training.learningRate')}",
    ),
    Rule(
        "training.lrDecayRatio",
        "spec.training.warmupRatio + spec.training.lrDecayRatio must be at most 1 with "
        "spec.training.lrScheduler wsd: the warm-up and the decay share the steps",
        lambda s: (
            s.training.lr_scheduler != LrScheduler.WSD
            or s.training.warmup_ratio + s.training.lr_decay_ratio <= 1.0
        ),
        f"{value('training.lrScheduler')} != 'wsd' || "
        f"{value('training.warmupRatio')} + {value('training.lrDecayRatio')} <= 1.0",
    ),
    Rule(
        "training.evalEverySteps",
        "needs spec.data.eval (the records to evaluate on)",
        lambda s: s.training.eval_every_steps is None or s.data.eval is not None,
        f"!{present('training.evalEverySteps')} || has(self.data.eval)",
    ),
    Rule(
        "rollout.batchSize",
        "spec.rollout.batchSize x spec.rollout.samplesPerPrompt must be a multiple of "
        "spec.training.globalBatchSize (every rollout round feeds whole optimizer steps)",
        lambda s: (
            s.rollout is None
            # Mode preference's student answers every prompt before training, batchSize prompts a call.
            or s.mode == Mode.PREFERENCE
            or (s.rollout.batch_size * s.rollout.samples_per_prompt) % s.training.global_batch_size == 0
        ),
        f"!has(self.rollout) || !({_NOT_PREFERENCE}) || "
        f"({value('rollout.batchSize')} * {value('rollout.samplesPerPrompt')})"
        f" % {value('training.globalBatchSize')} == 0",
    ),
    Rule(
        "rollout.lmbda",
        "below 1 needs spec.rollout.batchSize x spec.rollout.samplesPerPrompt == "
        "spec.training.globalBatchSize (an on-policy step answers the prompts of its own global batch of the "
        "dataset: one round per step)",
        lambda s: (
            s.rollout is None
            or s.rollout.lmbda >= 1.0
            or s.rollout.batch_size * s.rollout.samples_per_prompt == s.training.global_batch_size
        ),
        f"!has(self.rollout) || {value('rollout.lmbda')} >= 1.0 || {value('rollout.batchSize')} * "
        f"{value('rollout.samplesPerPrompt')} == {value('training.globalBatchSize')}",
    ),
    Rule(
        "rollout.lmbda",
        "below 1 trains the other steps on the dataset's responses: every training source with promptKey "
        "needs its responseKey",
        lambda s: (
            s.rollout is None
            or s.rollout.lmbda >= 1.0
            or all(each.prompt_key is None or each.response_key is not None for each in _training_sources(s))
        ),
        f"!has(self.rollout) || {value('rollout.lmbda')} >= 1.0 || ((!{present('data.train.promptKey')} || "
        f"{present('data.train.responseKey')}) && (!{present('data.mixture')} || "
        "self.data.mixture.all(m, !has(m.promptKey) || has(m.responseKey))))",
    ),
    Rule(
        "rollout.sequenceKd",
        "needs spec.rollout.lmbda below 1: the teacher writes the responses of the steps not drawn on-policy",
        lambda s: s.rollout is None or not s.rollout.sequence_kd or s.rollout.lmbda < 1.0,
        f"!has(self.rollout) || !{value('rollout.sequenceKd')} || {value('rollout.lmbda')} < 1.0",
    ),
    Rule(
        "rollout.sequenceKd",
        "needs one teacher (spec.teacher), not spec.teachers: that teacher's engines write the responses",
        lambda s: s.rollout is None or not s.rollout.sequence_kd or s.teachers is None,
        f"!has(self.rollout) || !{value('rollout.sequenceKd')} || !has(self.teachers)",
    ),
    *_REINFORCEMENT_RULES,
    *_PREFERENCE_RULES,
    Rule(
        "rollout.maxNewTokens",
        "must be less than spec.data.maxLength (prompt and response share it)",
        lambda s: s.rollout is None or s.rollout.max_new_tokens < s.data.max_length,
        f"!has(self.rollout) || {value('rollout.maxNewTokens')} < {value('data.maxLength')}",
    ),
    Rule(
        "rollout.tensorParallel",
        "must be at most spec.cluster.gpusPerNode (one rollout engine lives on one node)",
        lambda s: s.rollout is None or s.rollout.tensor_parallel <= s.cluster.gpus_per_node,
        f"!has(self.rollout) || {value('rollout.tensorParallel')} <= {value('cluster.gpusPerNode')}",
    ),
    Rule(
        "data.promptMaxLength",
        "must be less than spec.data.maxLength (leave room for the response)",
        lambda s: s.data.prompt_max_length < s.data.max_length,
        f"{value('data.promptMaxLength')} < {value('data.maxLength')}",
    ),
    _source_keys_pair("train"),
    _source_keys_pair("eval"),
    _hub_split("train"),
    _hub_split("eval"),
    Rule(
        "data.train",
        "set exactly one of spec.data.train (one source) and spec.data.mixture (weighted sources)",
        lambda s: (s.data.train is None) != (s.data.mixture is None),
        f"{present('data.train')} != {present('data.mixture')}",
    ),
    Rule(
        "data.mixture",
        "every source's promptKey and responseKey go together: set both (prompt/response records) or "
        "neither (chat records); onPolicy (or selfDistillation with a rollout section) may set promptKey "
        "alone",
        lambda s: all(
            (m.prompt_key is None) == (m.response_key is None) or (s.on_policy and m.response_key is None)
            for m in s.data.mixture or []
        ),
        f"!{present('data.mixture')} || self.data.mixture.all(m, has(m.promptKey) == has(m.responseKey)"
        f" || ({_on_policy()} && !has(m.responseKey)))",
    ),
    Rule(
        "data.mixture",
        "every source whose format is hub needs a split (the split of the hub dataset to read, e.g. train)",
        lambda s: all(m.format != DataFormat.HUB or m.split is not None for m in s.data.mixture or []),
        f"!{present('data.mixture')} || self.data.mixture.all(m, "
        f"(has(m.format) ? m.format : {_cel_literal(_source_default('format'))}) != 'hub' || has(m.split))",
    ),
    Rule(
        "data.mixture",
        "not with spec.generation yet, which writes the responses to spec.data.train's prompts into one "
        "generated file: use spec.data.train",
        lambda s: s.data.mixture is None or s.generation is None,
        f"!{present('data.mixture')} || !has(self.generation)",
    ),
    Rule(
        "data.train.teacherInputKey",
        "not used when spec.mode is sft (there is no teacher)",
        lambda s: s.mode != Mode.SFT or s.data.train is None or s.data.train.teacher_input_key is None,
        f"{value('mode')} != 'sft' || !{present('data.train.teacherInputKey')}",
    ),
    Rule(
        "data.mixture",
        "teacherInputKey is not used when spec.mode is sft (there is no teacher): remove it from every "
        "source",
        lambda s: s.mode != Mode.SFT or all(m.teacher_input_key is None for m in s.data.mixture or []),
        f"{value('mode')} != 'sft' || !{present('data.mixture')} || "
        "self.data.mixture.all(m, !has(m.teacherInputKey))",
    ),
    Rule(
        "student.fsdpShardSize",
        "must be -1 (shard over all ranks) or divide spec.student.replicas",
        lambda s: (
            s.student.fsdp_shard_size == -1
            or (s.student.fsdp_shard_size > 0 and s.student.replicas % s.student.fsdp_shard_size == 0)
        ),
        f"{value('student.fsdpShardSize')} == -1 || ({value('student.fsdpShardSize')} > 0"
        f" && {value('student.replicas')} % {value('student.fsdpShardSize')} == 0)",
    ),
    Rule(
        "student.contextParallel",
        "must divide spec.student.replicas (each context group of ranks shares its sequences)",
        lambda s: s.student.replicas % s.student.context_parallel == 0,
        f"{value('student.replicas')} % {value('student.contextParallel')} == 0",
    ),
    Rule(
        "student.contextParallel",
        "more than 1 needs spec.student.attention sdpa or eager (its attention gathers keys and values and "
        "runs sdpa under a mask of the whole sequence)",
        lambda s: s.student.context_parallel == 1 or s.student.attention in (Attention.SDPA, Attention.EAGER),
        f"{value('student.contextParallel')} == 1 || {value('student.attention')} in ['sdpa', 'eager']",
    ),
    Rule(
        "student.contextParallel",
        "more than 1 is not for dskd or simpleCtkd yet: their alignments describe the whole sequence, which "
        "no rank holds",
        lambda s: s.student.context_parallel == 1 or s.distillation.algorithm not in ("dskd", "simpleCtkd"),
        f"{value('student.contextParallel')} == 1"
        f" || !({value('distillation.algorithm')} in ['dskd', 'simpleCtkd'])",
    ),
    Rule(
        "student.contextParallel",
        "more than 1 needs spec.student.fsdpShardSize -1 (parameters are sharded over every rank of the "
        "(data, context) mesh)",
        lambda s: s.student.context_parallel == 1 or s.student.fsdp_shard_size == -1,
        f"{value('student.contextParallel')} == 1 || {value('student.fsdpShardSize')} == -1",
    ),
    Rule(
        "student.replicas",
        "must be at most spec.cluster.gpusPerNode or a multiple of it (student pods fill whole nodes)",
        lambda s: (
            s.student.replicas <= s.cluster.gpus_per_node or s.student.replicas % s.cluster.gpus_per_node == 0
        ),
        f"{value('student.replicas')} <= {value('cluster.gpusPerNode')}"
        f" || {value('student.replicas')} % {value('cluster.gpusPerNode')} == 0",
    ),
    Rule(
        "distillation.teacherEmaDecay",
        "only used when spec.mode is selfDistillation",
        lambda s: s.distillation.teacher_ema_decay is None or s.mode == Mode.SELF_DISTILLATION,
        f"!{present('distillation.teacherEmaDecay')} || {value('mode')} == 'selfDistillation'",
    ),
    Rule(
        "distillation.topkVocab",
        "only used when spec.distillation.dskdProjectorInit is pseudoInverse (it picks the tokens the "
        "pseudo-inverse fits over)",
        lambda s: (
            s.distillation.topk_vocab is None
            or s.distillation.dskd_projector_init == DskdProjectorInit.PSEUDO_INVERSE
        ),
        f"!{present('distillation.topkVocab')} || "
        f"{value('distillation.dskdProjectorInit')} == 'pseudoInverse'",
    ),
    Rule(
        "teacher.stepsPerWake",
        "more than 1 needs spec.cluster.colocate: a teacher on GPUs of its own computes every step's hidden "
        "states while the students train the step before",
        lambda s: s.teacher is None or s.teacher.steps_per_wake == 1 or s.cluster.colocate,
        f"{value('teacher.stepsPerWake')} == 1 || {value('cluster.colocate')}",
    ),
    Rule(
        "student.attention",
        "flash_attention_2 and eager have no SGLang counterpart: choose sdpa, flash_attention_3 or "
        "flex_attention with an SGLang teacher or rollout (spec.teacher.backend, spec.rollout.backend), or "
        "their transformers backend",
        lambda s: (
            s.student.attention not in (Attention.FLASH_ATTENTION_2, Attention.EAGER)
            or (
                (s.teacher is None or s.teacher.backend != Backend.SGLANG)
                and (s.rollout is None or s.rollout.backend != Backend.SGLANG)
            )
        ),
        f"!({value('student.attention')} in ['flash_attention_2', 'eager']) || "
        f"({value('teacher.backend')} != 'sglang' && {value('rollout.backend')} != 'sglang')",
    ),
    Rule(
        "cluster.colocate",
        "needs spec.teacher.replicas x spec.teacher.gpusPerReplica == spec.student.replicas, for each of "
        "spec.teachers too (teacher and student take turns on the same GPUs)",
        lambda s: (
            not s.cluster.colocate
            or s.mode == Mode.SFT
            or all(_teacher_gpus(one) == s.student.replicas for one in s.as_each_teacher())
        ),
        f"!{value('cluster.colocate')} || {value('mode')} == 'sft' || "
        f"(has(self.teachers) ? self.teachers.all(t, {_each_teacher(_COLOCATED_TEACHER_GPUS)}) : "
        f"{_COLOCATED_TEACHER_GPUS})",
    ),
    Rule(
        "cluster.colocate",
        "needs spec.rollout.engines x spec.rollout.tensorParallel == spec.student.replicas (rollout and "
        "student take turns on the same GPUs)",
        lambda s: (
            not s.cluster.colocate
            or s.rollout is None
            or s.rollout.engines * s.rollout.tensor_parallel == s.student.replicas
        ),
        f"!{value('cluster.colocate')} || !has(self.rollout) || "
        f"{value('rollout.engines')} * {value('rollout.tensorParallel')} == {value('student.replicas')}",
    ),
)


def _for_every_teacher(rule: Rule) -> Rule:
    """A rule on spec.teacher's own settings, applied to each of spec.teachers: the predicate on the spec with
    that teacher as its only one, the CEL with the list item `t` for self.teacher."""
    item = _each_teacher(rule.cel)
    setting = rule.field.removeprefix("teacher.")
    return Rule(
        "teachers",
        f"each teacher's {setting}: {rule.message.replace('spec.teacher.', 'its ')}",
        lambda s: s.teachers is None or all(rule.holds(one) for one in s.as_each_teacher()),
        f"!has(self.teachers) || self.teachers.all(t, {item})",
    )


RULES: tuple[Rule, ...] = _RULES + tuple(
    _for_every_teacher(rule)
    for rule in _RULES
    if rule.field.startswith("teacher.")
    and rule.field != "teacher.model"
    and "self.teacher." in rule.cel
    and "self.mode" not in rule.cel
)
"""spec.teacher's layout rules hold for each of spec.teachers too (its model is required there; rules of a
mode or a section that allows no spec.teachers are left out)."""
