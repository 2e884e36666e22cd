"""The single controller on the Ray driver: it owns the data and the loop, and moves data between the groups.

One step reads top to bottom like the algorithm: take a global batch, cut it into micro-batches per student
rank, get the teacher's hidden states for them (object refs, straight from the teacher actors to the
student ranks), run the student step, log. The teacher's work for the next step is dispatched before the
student step of this one is awaited, so teacher inference overlaps student training (KDFlow runs them one
after the other) — unless they share GPUs (colocation), where they must take turns.
"""

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray

from kubedistill.api import telemetry
from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import DataSource, Mode
from kubedistill.runtime.algorithms.base import ALGORITHMS
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.batching import shard_micro_batches
from kubedistill.runtime.data.errors import BadRecord
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.engines.group import EngineActorGroup
from kubedistill.runtime.models.loading import compute_dtype, load_tokenizer
from kubedistill.runtime.models.roles import has_teacher, kd_config, student_tokenizer_path, teacher_spec
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.student.actor import TeacherUnavailable
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.group import RankWork, StudentActorGroup
from kubedistill.runtime.student.worker import EvalStats, StepStats
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.group import TeacherActorGroup
from kubedistill.runtime.trainer.checkpoints import Checkpoint, CheckpointDirectory, TrainerState
from kubedistill.runtime.trainer.metrics import TrainerMetrics
from kubedistill.runtime.trainer.preflight import metrics_port_asked
from kubedistill.runtime.trainer.report import (
    Progress,
    plot_losses,
    print_summary,
    write_metrics,
    write_summary,
)
from kubedistill.runtime.trainer.resume import check_resumable, is_finished, origin_of
from kubedistill.runtime.trainer.sources import BatchSource, DatasetBatches, RolloutBatches, epoch_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    output_dir: Path
    stop_after_steps: int | None = None
    """Stop once this many steps are done (the schedule still follows the spec, so a later run resumes)."""
    metrics_port: int | None = None
    """Port of /metrics; None reads KUBEDISTILL_METRICS_PORT (else the default, which alone may fall back to
    a free port when busy), 0 picks a free port."""
    namespace: str = "local"
    progress: bool = True
    print_summary: bool = True


@dataclass
class StepPlan:
    """One global batch laid out for the ranks, with the teacher's work already dispatched."""

    work: list[RankWork]
    normalizer: int
    teacher_positions: int
    dispatched_at: float
    rollout_seconds: float = 0.0


@dataclass
class RunResult:
    summary: dict
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, job: DistillationJob, options: RunOptions) -> None:
        self.job = job
        self.options = options
        self.spec = job.spec
        self.kd = kd_config(job)
        self.tokenizer = load_tokenizer(student_tokenizer_path(job))
        self.algorithm = ALGORITHMS.get(self.spec.distillation.algorithm)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # On-policy (self-distillation too) trains on prompts; its eval data keeps the dataset's responses
        # to score.
        train_mode = Mode.ON_POLICY if self.spec.on_policy else self.spec.mode
        self.train, bad_train = self._load(self.spec.data.train, "spec.data.train", train_mode)
        self.eval: list[Sample] = []
        bad_eval: list[BadRecord] = []
        if self.spec.data.eval is not None:
            mode = Mode.OFF_POLICY if self.spec.on_policy else self.spec.mode
            self.eval, bad_eval = self._load(self.spec.data.eval, "spec.data.eval", mode)
        self.bad_records = bad_train + bad_eval
        for bad in self.bad_records:
            log.warning("skipped bad record %s", bad)
        self.truncated = [sample for sample in self.train + self.eval if sample.truncation]
        self.origin = origin_of(job, self.train)
        self.steps_per_epoch = epoch_steps(self.spec, len(self.train))
        self.total_steps = self.steps_per_epoch * self.spec.training.epochs
        if self.spec.training.max_steps is not None:
            self.total_steps = min(self.total_steps, self.spec.training.max_steps)
        self.checkpoints = (
            CheckpointDirectory(Path(self.spec.checkpoint.path), self.spec.checkpoint.keep)
            if self.spec.checkpoint.path
            else None
        )
        self.metrics = TrainerMetrics(options.namespace, job.name)
        self.teacher: TeacherActorGroup | None = None
        self.students: StudentActorGroup | None = None
        self.rollout: RolloutActorGroup | None = None
        self.source: BatchSource | None = None
        self.recoveries: list[dict] = []
        """Failures survived: the step training went on from, and what failed."""
        self._state: TrainerState | None = None
        """Where training stands, step by step (what a fault or an interruption finds)."""

    @property
    def stop_step(self) -> int:
        """The step this run stops at: the job's end, or earlier when asked."""
        stop = self.options.stop_after_steps
        return self.total_steps if stop is None else min(self.total_steps, stop)

    def resume_point(self) -> Checkpoint | None:
        """The checkpoint this run goes on from; `ResumeRefused` when it was made from another job."""
        latest = self.checkpoints.latest() if self.checkpoints else None
        if latest is not None:
            check_resumable(latest, self.origin)
        return latest

    def finished(self, checkpoint: Checkpoint | None) -> bool:
        """Whether this run has nothing left to do: trained to its stop step, and the output written."""
        return is_finished(checkpoint, self.stop_step, self.options.output_dir, self.job.name)

    def _load(self, source: DataSource, field_path: str, mode: Mode) -> tuple[list[Sample], list[BadRecord]]:
        teacher_tokenizer = None
        teacher = teacher_spec(self.job) if has_teacher(self.job) else None
        if teacher is not None and (teacher.tokenizer or teacher.model):
            teacher_tokenizer = load_tokenizer(teacher.tokenizer or teacher.model)
        loaded = load_samples(
            source,
            self.spec.data,
            self.tokenizer,
            mode=mode,
            teacher_tokenizer=teacher_tokenizer,
            field=field_path,
            cross_tokenizer=self.algorithm.cross_tokenizer,
        )
        return loaded.samples, loaded.bad_records

    # -- the run --------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.options.output_dir.mkdir(parents=True, exist_ok=True)
        self._serve_metrics()
        try:
            self._start_groups()
            state = self._resume()
            state = self._train(state)
            state = self._final_evaluation(state)
            self._export()
            result = self._finish(state)
        except KeyboardInterrupt:
            self.shutdown(graceful=False)
            # What was done stays readable; the checkpoints hold what a re-run goes on from.
            if self._state is not None and self._state.history:
                self._report(self._state, interrupted=True)
            raise
        except BaseException:
            # A failed collective can leave ranks waiting for a peer: stop them without asking.
            self.shutdown(graceful=False)
            raise
        self.shutdown()
        return result

    @property
    def steps_done(self) -> int | None:
        """The step training reached (what an interrupted run stopped at); None before it started."""
        return self._state.step if self._state is not None else None

    def evaluate_students(self, models: list[str]) -> list[dict]:
        """Evaluate each student model (a path, as on disk) against this job's teacher on data.eval, without
        training; the teacher is started once for all of them. The models share the job's tokenizer."""
        cluster = ClusterView.current()
        records = []
        try:
            if has_teacher(self.job):
                self.teacher = TeacherActorGroup(self.job, cluster)
            for model in models:
                student = self.spec.student.model_copy(update={"model": model})
                job = self.job.model_copy(update={"spec": self.spec.model_copy(update={"student": student})})
                self.students = StudentActorGroup(job, self.total_steps, cluster)
                records.append(self._eval_record(self._evaluate(), step=0))
                self.students.shutdown()
                self.students = None
        finally:
            self.shutdown()
        return records

    def _train(self, state: TrainerState) -> TrainerState:
        """Train to the end, recovering from dead actors up to spec.backoffLimit times: a dead teacher is
        restarted and the step retried; dead student ranks are restarted from the newest checkpoint."""
        while True:
            self._state = state
            try:
                return self._train_steps(state)
            except (ray.exceptions.RayActorError, TeacherUnavailable) as error:
                if len(self.recoveries) >= self.spec.backoff_limit:
                    raise
                state = self._recover(error, self._state)
                self.recoveries.append({"step": state.step, "error": _failure_kind(error)})

    def _recover(self, error: Exception, state: TrainerState) -> TrainerState:
        if isinstance(error, TeacherUnavailable):
            log.warning(
                "a teacher engine failed at step %d: restarting it, retrying the step", state.step + 1
            )
            self.teacher.shutdown(graceful=False)
            self.teacher = TeacherActorGroup(self.job, ClusterView.current())
            self._put_engines_to_sleep()
            if self._teacher_follows_student():
                self._restore_teacher()
            return state
        log.warning(
            "a student rank failed at step %d (%s): restarting from the newest checkpoint",
            state.step + 1,
            _failure_kind(error),
        )
        self.students.shutdown(graceful=False)
        self.students = StudentActorGroup(self.job, self.total_steps, ClusterView.current())
        self._join_rollout()
        return self._resume()

    def _train_steps(self, state: TrainerState) -> TrainerState:
        stop = self.total_steps
        if self.options.stop_after_steps is not None:
            stop = min(stop, self.options.stop_after_steps)
        progress = Progress(
            self.total_steps,
            state.step,
            self.job.name,
            self.spec.training.log_every_steps,
            self.options.progress,
        )
        plan = self._plan(state) if state.step < stop else None
        try:
            while plan is not None:
                started = time.perf_counter()
                teacher_seconds = self._await_teacher(plan)
                following = self._advance(state)
                # Dispatch the next step's teacher work before this step's student work is awaited.
                prefetch = following.step < stop and self._may_prefetch(following)
                planning = time.perf_counter()
                next_plan = self._plan(following) if prefetch else None
                calling = time.perf_counter()
                stats = self.students.train_step(plan.work, plan.normalizer)
                done = time.perf_counter()
                record = self._train_record(following.step, state.epoch, stats, done - started)
                record["teacher_seconds"] = teacher_seconds
                record["plan_seconds"] = calling - planning
                record["student_call_seconds"] = done - calling
                record["rollout_seconds"] = plan.rollout_seconds
                record["transfer_bytes"] = self._transfer_bytes(plan)
                state = replace(
                    following,
                    skipped_steps=state.skipped_steps + int(stats.skipped),
                    history=[*state.history, record],
                )
                self._publish(record, plan, stats)
                progress.update(record)
                state = self._after_step(state)
                self._state = state
                if next_plan is None and state.step < stop:
                    next_plan = self._plan(state)
                plan = next_plan
        finally:
            progress.close()
        return state

    def _after_step(self, state: TrainerState) -> TrainerState:
        """What follows a step, in order: weights to the engines that need them, eval, checkpoint."""
        if self.rollout is not None and self.source.needs_new_weights(state.batch_in_epoch):
            self._sync_rollout()
            state = replace(state, history=[*state.history, self._probe(state.step)])
        if self._teacher_follows_student() and state.step % self.spec.distillation.teacher_update_freq == 0:
            self._update_teacher()
        every = self.spec.training.eval_every_steps
        if every and self.eval and state.step % every == 0 and state.step < self.total_steps:
            state = replace(state, history=[*state.history, self._eval_record(self._evaluate(), state.step)])
        if self.checkpoints and self._checkpoint_due(state):
            self._save(state)
        return state

    def _checkpoint_due(self, state: TrainerState) -> bool:
        every = self.spec.checkpoint.every_steps
        return state.step % every == 0 and self.source.resumable_at(state.batch_in_epoch)

    @contextlib.contextmanager
    def _turn(self, engines: EngineActorGroup | None) -> Iterator[None]:
        """Colocation: an engine group gets the GPUs for a while; the students' optimizer state makes room."""
        if not self.spec.cluster.colocate or engines is None:
            yield
            return
        self.students.move_optimizer_state("cpu")
        engines.wake()
        try:
            yield
        finally:
            engines.sleep()
            self.students.move_optimizer_state("device")

    def _teacher_follows_student(self) -> bool:
        return self.spec.mode == Mode.SELF_DISTILLATION and self.teacher is not None

    def _update_teacher(self) -> None:
        """Self-distillation: the teacher takes the student's weights, or their moving average."""
        self.students.become_teacher(self.teacher.actors)

    def _restore_teacher(self) -> None:
        """Self-distillation: engines that start from the initial weights (a resumed run, a restarted
        teacher) take what the teacher held: its moving average, or the student's weights at its last copy."""
        self.students.restore_teacher(self.teacher.actors)

    def _probe(self, step: int) -> dict:
        """The student's greedy answer to the first training prompt, after each weight sync: a way to watch
        the policy change."""
        prompt = list(self.train[0].input_ids)
        sampling = SamplingConfig(
            max_new_tokens=self.spec.rollout.max_new_tokens,
            temperature=0.0,
            top_p=1.0,
            samples_per_prompt=1,
            seed=0,
        )
        with self._turn(self.rollout):
            response = self.rollout.generate([prompt], sampling)[0]
        return {"kind": "probe", "step": step, "response": self.tokenizer.decode(response)}

    # -- one step -------------------------------------------------------------------------------------------

    def _plan(self, state: TrainerState) -> StepPlan:
        started = time.perf_counter()
        samples = self.source.samples(state.epoch, state.batch_in_epoch)
        rollout_seconds = time.perf_counter() - started if self.rollout is not None else 0.0
        training = self.spec.training
        shards = shard_micro_batches(
            samples, self.students.world_size, training.micro_batch_size, training.max_tokens_per_device
        )
        plan = self._lay_out(shards)
        plan.rollout_seconds = rollout_seconds
        return plan

    def _lay_out(self, shards: list[list[list[Sample]]]) -> StepPlan:
        """Micro-batches per rank, with the teacher's hidden states for each already requested."""
        normalizer = sum(sample.num_targets for batches in shards for batch in batches for sample in batch)
        flat = [
            (rank, index, batch) for rank, batches in enumerate(shards) for index, batch in enumerate(batches)
        ]
        refs: dict[tuple[int, int], ray.ObjectRef] = {}
        positions = 0
        if self.teacher is not None:
            requests = [(rank, index, teacher_batch(batch)) for rank, index, batch in flat if batch]
            with self._turn(self.teacher):
                answers = self.teacher.hidden_states_refs([r for _, _, r in requests])
                if self.spec.cluster.colocate:
                    # The engine must finish before it sleeps; its outputs wait in the object store.
                    ray.wait(answers, num_returns=len(answers), fetch_local=False)
            for (rank, index, request), ref in zip(requests, answers, strict=True):
                refs[(rank, index)] = ref
                positions += request.num_positions
        extras = self.algorithm.micro_batch_extras
        work = [
            RankWork(
                micro_batches=[
                    MicroBatch.from_samples(batch, self.pad_id, extras(batch)) for batch in batches
                ],
                teacher_refs=[refs.get((rank, index)) for index in range(len(batches))],
            )
            for rank, batches in enumerate(shards)
        ]
        return StepPlan(work, max(normalizer, 1), positions, time.perf_counter())

    def _await_teacher(self, plan: StepPlan) -> float:
        refs = [ref for share in plan.work for ref in share.teacher_refs if ref is not None]
        started = time.perf_counter()
        if refs:
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
        return time.perf_counter() - started

    def _transfer_bytes(self, plan: StepPlan) -> int:
        """Bytes of teacher hidden states this step moved to the students (nothing else crosses)."""
        if self.teacher is None:
            return 0
        return (
            plan.teacher_positions
            * self.teacher.hidden_size
            * compute_dtype(self.spec.training.precision).itemsize
        )

    def _may_prefetch(self, following: TrainerState) -> bool:
        """Whether the next step can be prepared while this one trains: not when teacher and student share
        GPUs, and not when the next step needs weights that this step produces (a new rollout round, a
        teacher that follows the student)."""
        if self.spec.cluster.colocate or self.source.needs_new_weights(following.batch_in_epoch):
            return False
        freq = self.spec.distillation.teacher_update_freq
        return not (self._teacher_follows_student() and following.step % freq == 0)

    def _advance(self, state: TrainerState) -> TrainerState:
        batch = state.batch_in_epoch + 1
        epoch = state.epoch
        if batch == self.steps_per_epoch:
            epoch, batch = epoch + 1, 0
        return replace(state, step=state.step + 1, epoch=epoch, batch_in_epoch=batch)

    def _train_record(self, step: int, epoch: int, stats: StepStats, seconds: float) -> dict:
        targets = max(stats.num_targets, 1)
        kd_loss = stats.kd_sum / targets
        ce_loss = stats.ce_sum / targets
        return {
            "kind": "train",
            "step": step,
            "epoch": epoch,
            "loss": (1.0 - self.kd.kd_ratio) * ce_loss + self.kd.kd_ratio * kd_loss,
            "kd_loss": kd_loss,
            "ce_loss": ce_loss,
            "grad_norm": stats.grad_norm,
            "learning_rate": stats.learning_rate,
            "tokens": stats.num_tokens,
            "targets": stats.num_targets,
            "step_seconds": seconds,
            **stats.timings(),
            "tokens_per_second": stats.num_tokens / seconds if seconds > 0 else 0.0,
            "skipped": stats.skipped,
        }

    def _publish(self, record: dict, plan: StepPlan, stats: StepStats) -> None:
        m = self.metrics
        m.set(telemetry.STEP, record["step"])
        m.set(telemetry.TOTAL_STEPS, self.total_steps)
        m.set(telemetry.EPOCH, record["epoch"])
        m.set(telemetry.LOSS, record["loss"])
        m.set(telemetry.KD_LOSS, record["kd_loss"])
        m.set(telemetry.CE_LOSS, record["ce_loss"])
        m.observe(telemetry.STEP_SECONDS, record["step_seconds"])
        m.set(telemetry.LAST_STEP_SECONDS, record["step_seconds"])
        m.set(telemetry.TOKENS_PER_SECOND, record["tokens_per_second"])
        m.observe(telemetry.TEACHER_SECONDS, record["teacher_seconds"])
        m.add(telemetry.TRANSFER_BYTES, record["transfer_bytes"])
        m.set(telemetry.LEARNING_RATE, record["learning_rate"])
        if math.isfinite(stats.grad_norm):
            m.set(telemetry.GRAD_NORM, stats.grad_norm)
        m.add(telemetry.SKIPPED_STEPS, int(stats.skipped))

    # -- evaluation -----------------------------------------------------------------------------------------

    def _evaluate(self) -> EvalStats:
        ranks = self.students.world_size
        size = self.spec.training.micro_batch_size
        shares = [self.eval[rank::ranks] for rank in range(ranks)]
        depth = max(math.ceil(len(share) / size) for share in shares)
        # Every rank runs the same number of micro-batches (FSDP2 collectives); short ranks get empty ones.
        shards = [[share[i * size : (i + 1) * size] for i in range(depth)] for share in shares]
        plan = self._lay_out(shards)
        return self.students.evaluate(plan.work, plan.normalizer)

    def _eval_record(self, stats: EvalStats, step: int) -> dict:
        targets = max(stats.num_targets, 1)
        record = {
            "kind": "eval",
            "step": step,
            "eval_ce_loss": stats.ce_sum / targets,
            "eval_kd_divergence": stats.kd_sum / targets if has_teacher(self.job) else None,
            "eval_teacher_agreement": stats.agreements / targets if has_teacher(self.job) else None,
            "eval_tokens": stats.num_targets,
        }
        self.metrics.set(telemetry.EVAL_LOSS, record["eval_ce_loss"])
        if has_teacher(self.job):
            self.metrics.set(telemetry.EVAL_KD_DIVERGENCE, record["eval_kd_divergence"])
            self.metrics.set(telemetry.EVAL_TEACHER_AGREEMENT, record["eval_teacher_agreement"])
        log.info("eval at step %d: %s", step, record)
        return record

    def _final_evaluation(self, state: TrainerState) -> TrainerState:
        last = state.history[-1] if state.history else {}
        # A run resumed from its own final checkpoint (to export elsewhere) was evaluated there already.
        if not self.eval or (last.get("kind") == "eval" and last.get("step") == state.step):
            return state
        return replace(state, history=[*state.history, self._eval_record(self._evaluate(), state.step)])

    # -- groups, checkpoints, export ------------------------------------------------------------------------

    def _start_groups(self) -> None:
        cluster = ClusterView.current()
        # Teacher and students start side by side (their actors import torch and load their models at the
        # same time); each group that did start is kept before an error of the other is raised, so that
        # shutdown() stops it.
        with ThreadPoolExecutor(max_workers=2) as pool:
            starting = {"students": pool.submit(StudentActorGroup, self.job, self.total_steps, cluster)}
            if has_teacher(self.job):
                starting["teacher"] = pool.submit(TeacherActorGroup, self.job, cluster)
        for name, future in starting.items():
            if future.exception() is None:
                setattr(self, name, future.result())
        for future in starting.values():
            if (error := future.exception()) is not None:
                raise error
        if self.spec.on_policy:
            self.rollout = RolloutActorGroup(self.job, cluster)
            rollout_turn = lambda: self._turn(self.rollout)  # noqa: E731 - evaluated at each round
            self.source = RolloutBatches(
                self.train, self.job, self.rollout, self.spec.data.max_length, turn=rollout_turn
            )
        else:
            self.source = DatasetBatches(
                self.train, self.spec.training.global_batch_size, self.spec.training.seed
            )
        self._join_rollout()
        self._put_engines_to_sleep()

    def _broadcasts_weights(self) -> bool:
        """Rollout engines on GPUs of their own take the student's weights over a broadcast group; colocated
        ones as CPU tensors through Ray (node-local: shared memory on SGLang)."""
        return self.rollout is not None and not self.spec.cluster.colocate

    def _join_rollout(self) -> None:
        if self._broadcasts_weights():
            self.students.join_engines(self.rollout.actors, self.rollout.tensor_parallel, self.rollout.sglang)

    def _sync_rollout(self) -> None:
        if self._broadcasts_weights():
            self.students.broadcast_weights(self.rollout.actors)
        else:
            self.students.push_weights(self.rollout.actors)

    def _put_engines_to_sleep(self) -> None:
        """Colocation: engines start asleep, the GPUs are the students' until an engine's turn."""
        if self.spec.cluster.colocate:
            for engines in (self.teacher, self.rollout):
                if engines is not None:
                    engines.sleep()

    def _resume(self) -> TrainerState:
        fresh = TrainerState(step=0, epoch=0, batch_in_epoch=0, bad_records=len(self.bad_records))
        self.metrics.set(telemetry.TOTAL_STEPS, self.total_steps)
        self.metrics.add(telemetry.BAD_RECORDS, len(self.bad_records))
        self.metrics.add(telemetry.TRUNCATED_RECORDS, len(self.truncated))
        latest = self.resume_point()
        if latest is None:
            return fresh
        log.info("resuming from %s (step %d)", latest.path, latest.state.step)
        self.students.load_checkpoint(str(latest.path))
        # Engines that follow the student start from its initial weights: bring them to the checkpoint's.
        if self.rollout is not None:
            self._sync_rollout()
        if self._teacher_follows_student():
            self._restore_teacher()
        self.metrics.set(telemetry.STEP, latest.state.step)
        self.metrics.set(telemetry.LAST_CHECKPOINT_STEP, latest.state.step)
        return replace(latest.state, bad_records=len(self.bad_records))

    def _save(self, state: TrainerState) -> None:
        staging = self.checkpoints.staging(state.step)
        self.students.save_checkpoint(str(staging))
        self.checkpoints.commit(staging, state, self.origin.to_json())
        self.metrics.set(telemetry.LAST_CHECKPOINT_STEP, state.step)

    def _export(self) -> None:
        self.students.export(str(self.options.output_dir))

    def _finish(self, state: TrainerState) -> RunResult:
        if self.checkpoints and (not state.history or state.step % self.spec.checkpoint.every_steps):
            self._save(state)
        summary = self._report(state)
        if self.options.print_summary:
            print_summary(summary)
        return RunResult(summary=summary, history=state.history)

    def _report(self, state: TrainerState, interrupted: bool = False) -> dict:
        """`metrics.jsonl`, the loss plot and `summary.json` of the steps in `state`."""
        history = state.history
        out = self.options.output_dir
        write_metrics(out, history)
        trains = [r for r in history if r["kind"] == "train"]
        evals = [r for r in history if r["kind"] == "eval"]
        summary: dict = {
            "job": self.job.name,
            "mode": str(self.spec.mode),
            "steps": state.step,
            "total_steps": self.total_steps,
            "final_loss": trains[-1]["loss"] if trains else None,
            "mean_step_seconds": sum(r["step_seconds"] for r in trains) / len(trains) if trains else None,
            "mean_tokens_per_second": sum(r["tokens_per_second"] for r in trains) / len(trains)
            if trains
            else None,
            "transfer_bytes": sum(r.get("transfer_bytes", 0) for r in trains),
            "skipped_steps": state.skipped_steps,
            "recoveries": self.recoveries,
            "bad_records": len(self.bad_records),
            "bad_record_sources": [str(bad) for bad in self.bad_records[:20]],
            "truncated_records": len(self.truncated),
            "truncated_record_sources": [
                f"{sample.source}: {sample.truncation}" for sample in self.truncated[:20]
            ],
            "output_dir": str(out),
        }
        if interrupted:
            summary["interrupted"] = True
        if evals:
            summary.update({k: v for k, v in evals[-1].items() if k.startswith("eval_") and v is not None})
        if trains:
            summary["loss_plot"] = str(plot_losses(out, history, self.job.name))
        summary["metrics_file"] = str(out / "metrics.jsonl")
        write_summary(out, summary)
        return summary

    def _serve_metrics(self) -> None:
        try:
            port = self.metrics.serve(self.options.metrics_port)
        except OSError as error:
            # A port someone asked for is theirs to fix; only the default may give way.
            if metrics_port_asked(self.options.metrics_port) is not None:
                raise
            port = self.metrics.serve(0)
            log.warning("metrics port busy (%s); serving /metrics on port %d instead", error, port)
        log.info("serving /metrics on port %d", port)

    def shutdown(self, graceful: bool = True) -> None:
        for group in (self.students, self.teacher, self.rollout):
            if group is not None:
                group.shutdown(graceful)
        self.students = None
        self.teacher = None
        self.rollout = None
        self.metrics.close()


def _failure_kind(error: Exception) -> str:
    """What failed, without Ray's wrapping (a failure inside an actor arrives as RayTaskError(<cause>))."""
    return "TeacherUnavailable" if isinstance(error, TeacherUnavailable) else type(error).__name__


def teacher_batch(samples: list[Sample]) -> TeacherBatch:
    """What the teacher sees of a micro-batch: its own input (context distillation) at its own positions."""
    return TeacherBatch(
        sequences=[list(s.teacher_input_ids or s.input_ids) for s in samples],
        positions=[s.teacher_loss_positions() for s in samples],
    )
