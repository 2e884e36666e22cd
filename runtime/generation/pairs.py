"""Mode preference's pairs, made in the generation phase: the teacher's answers (chosen) come from the phase
as for sft; then the student answers the same prompts from its initial weights on the rollout engines
(rejected), into `<output>/generated/<job>.student.jsonl` through the same resumable store as the teacher's
(kept line by line, a rerun asks only what is missing, a finished file is reused); then each (prompt, sample)
both answered becomes a pair of `<job>.pairs.jsonl`, in TRL's conversational preference format
(`data.preference`), and the (prompt, sample)s only one side answered are counted and reported.

EasyDistill does the same in two batch passes of vLLM (modelscope/easydistill @ 934af26
`easydistill/rank/infer.py:230-250`: the teacher's answers as chosen, the student's as rejected) and joins
them on the prompt (`:211-225`), silently dropping a prompt one side lacks.

The student's answers are kept whether it ended them or maxNewTokens cut them off: a rejected answer is what
the student writes, and a small student often writes on until it is cut.
"""

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.generation.phase import GENERATED_DIR, GenerationResult
from kubedistill.runtime.generation.prompts import Prompt
from kubedistill.runtime.generation.store import GeneratedFile, Settings, Skipped, Usage, verdict

STUDENT = "student"
PAIRS = "pairs"


def student_settings(job: DistillationJob) -> Settings:
    """What the student's answers depend on: its model and spec.rollout's sampling, seeded as the teacher's
    are."""
    spec = job.spec
    assert spec.rollout is not None and spec.generation is not None, "a rule asks both in mode preference"
    rollout, generation = spec.rollout, spec.generation
    return Settings(
        teacher=spec.student.model,
        endpoint=None,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        seed=spec.training.seed if generation.seed is None else generation.seed,
    )


def student_file(job: DistillationJob, output_dir: Path) -> GeneratedFile:
    assert job.spec.rollout is not None and job.spec.generation is not None
    return GeneratedFile(
        output_dir / GENERATED_DIR,
        f"{job.name}.{STUDENT}",
        student_settings(job),
        job.spec.rollout.samples_per_prompt,
        keep_truncated=True,
        keep_reasoning=job.spec.generation.keep_reasoning,
    )


def answered_prompts(lines: Iterable[Mapping[str, Any]]) -> list[Prompt]:
    """The distinct prompts of generated lines, in their order, as the teacher was asked them (tools kept)."""
    prompts: dict[str, Prompt] = {}
    for line in lines:
        if line["promptId"] not in prompts:
            carried = {"tools": line["tools"]} if line.get("tools") else {}
            prompts[line["promptId"]] = Prompt(line["promptId"], line["prompt"], line["source"], carried)
    return list(prompts.values())


def run_student_answers(job: DistillationJob, output_dir: Path, prompts: list[Prompt]) -> GenerationResult:
    """The student's answers to `prompts` (Ray must be connected when any is missing), like
    `phase.run_generation`'s to the teacher's: resumed, counted, finished with a report."""
    from kubedistill.runtime.cluster.placement import ClusterView
    from kubedistill.runtime.generation.engine import StudentGenerators

    assert job.spec.rollout is not None
    store = student_file(job, output_dir)
    report = store.report()
    if report is not None:
        return GenerationResult(store.path, report, reused=True)
    done, skipped, missing, todo = store.outstanding(prompts)
    samples = store.samples_per_prompt
    if todo:
        generators = StudentGenerators(job, ClusterView.current())
        try:
            answers = generators.generate(todo, missing, store.settings, samples, job.spec.rollout.batch_size)
            for prompt, sample, response in answers:
                reason = verdict(response, keep_truncated=True)
                if reason is None:
                    store.append(store.line(prompt, sample, response))
                else:
                    skipped.append(Skipped(prompt.id, sample, prompt.source, reason, ""))
        finally:
            # The rollout engines' GPUs go back before the student ranks start.
            generators.shutdown()
    report = store.finish(prompts, skipped, {"prompts": len(prompts), "reusedLines": len(done)}, Usage())
    return GenerationResult(store.path, report, reused=False)


@dataclass(frozen=True)
class Pairs:
    path: Path
    pairs: int
    unpaired: Mapping[str, int]
    """(prompt, sample)s without a pair, by which answer they lack: `noStudentAnswer`, `noTeacherAnswer`."""
    example: str | None
    """`source` of the first unpaired one."""

    def summary(self) -> str:
        lacking = ", ".join(f"{count} {reason}" for reason, count in sorted(self.unpaired.items()))
        return f"preference: {self.pairs} pairs in {self.path}" + (
            f"; unpaired (prompt, sample)s: {lacking} (e.g. {self.example})" if lacking else ""
        )


def pair_lines(
    chosen: Iterable[Mapping[str, Any]], rejected: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], Counter[str], str | None]:
    """The pair of each (prompt id, sample) both sides answered, in the teacher's order: the prompt, each
    side's answer (its messages after the prompt), and where it came from; and the count of those one side
    lacks, by the side, with the first one's source."""
    theirs = {(line["promptId"], line["sample"]): line for line in rejected}
    pairs: list[dict[str, Any]] = []
    unpaired: Counter[str] = Counter()
    example = None
    for line in chosen:
        key = (line["promptId"], line["sample"])
        student = theirs.pop(key, None)
        if student is None:
            unpaired["noStudentAnswer"] += 1
            example = example or line["source"]
            continue
        prompt = line["prompt"]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": line["messages"][len(prompt) :],
                "rejected": student["messages"][len(prompt) :],
                **({"tools": line["tools"]} if line.get("tools") else {}),
                "promptId": line["promptId"],
                "sample": line["sample"],
                "source": line["source"],
            }
        )
    for line in theirs.values():
        unpaired["noTeacherAnswer"] += 1
        example = example or line["source"]
    return pairs, unpaired, example


def write_pairs(job: DistillationJob, output_dir: Path, teacher: Path, student: Path) -> Pairs:
    """`<job>.pairs.jsonl` from the two finished files, written whole and renamed into place (a crash leaves
    the old file or the new one); made again on every run from what both files hold."""
    pairs, unpaired, example = pair_lines(_lines(teacher), _lines(student))
    path = output_dir / GENERATED_DIR / f"{job.name}.{PAIRS}.jsonl"
    text = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    # Left as it is when it holds the same pairs: a rerun then finds the prepared set it keyed by the file's
    # modification time (`data.cache`) instead of tokenising again.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    return Pairs(path, len(pairs), dict(unpaired), example)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]


def make_pairs(job: DistillationJob, output_dir: Path, chosen: Path) -> tuple[Pairs, GenerationResult]:
    """The student's answers to the prompts the teacher answered in `chosen`, then the pairs file; a
    `ValueError` naming the field when no pair can be made."""
    prompts = answered_prompts(_lines(chosen))
    student = run_student_answers(job, output_dir, prompts)
    pairs = write_pairs(job, output_dir, chosen, student.path)
    if not pairs.pairs:
        raise ValueError(
            f"spec.rollout: none of the teacher's {len(prompts)} answered prompts has an answer of the "
            f"student to pair it with (see {student.skipped_path}); nothing to train on"
        )
    return pairs, student


def student_answers_done(job: DistillationJob, output_dir: Path) -> bool:
    """Whether an earlier run finished the student's answers (then no engine starts, and no Ray is needed)."""
    return student_file(job, output_dir).report() is not None
