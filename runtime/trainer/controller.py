"""The single controller on the Ray driver: it owns the data and the loop, and moves data between the groups.

`Trainer` is the job made ready before Ray starts (data read and tokenised, the schedule's length, where
checkpoints go). `Training` is one run of it, built whole once the groups are up: the groups, whose turn it
is on the GPUs, where batches come from, the engines that follow the student, the record log. One step reads
top to bottom like the algorithm: await the teacher's hidden states (object refs, straight from the teacher
actors to the student ranks), dispatch the next step's teacher work, run the student step, record, sync the
engines that follow, evaluate, checkpoint. Teacher inference for step N+1 overlaps the student's step N
(KDFlow runs them one after the other) unless they share GPUs.
"""

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from ray.exceptions import RayActorError, RayError

from kubedistill.api import telemetry
from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.placement import Role
from kubedistill.api.spec import DataSource, Mode
from kubedistill.runtime.algorithms.base import Algorithm, algorithm_for
from kubedistill.runtime.algorithms.grpo import check_teacher_vocabulary
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.cache import CACHE_FOLDER
from kubedistill.runtime.data.errors import BadRecord
from kubedistill.runtime.data.images import ImageInputs, ImageProcessing, load_image_processing
from kubedistill.runtime.data.load import LoadedData, load_samples, records_of
from kubedistill.runtime.data.mixture import Mixture, share_lines
from kubedistill.runtime.data.prepare import ray_cluster_nodes
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.models.chat_clock import pin_chat_clock
from kubedistill.runtime.models.loading import compute_dtype, load_tokenizer
from kubedistill.runtime.models.roles import (
    has_teacher,
    kd_config,
    student_tokenizer_path,
    teacher_spec,
    teacher_tokenizer_path,
)
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import generate_on
from kubedistill.runtime.student.actor import TeacherUnavailable
from kubedistill.runtime.student.group import StudentActorGroup
from kubedistill.runtime.student.worker import EvalStats, StepStats
from kubedistill.runtime.teacher.several import check_one_vocabulary, start_teachers
from kubedistill.runtime.trainer.checkpoints import (
    Checkpoint,
    CheckpointDirectory,
    TrainerState,
    find_checkpoint,
)
from kubedistill.runtime.trainer.colocation import GpuPolicy, gpu_policy, steps_of_a_wake
from kubedistill.runtime.trainer.followers import Probe, followers_of
from kubedistill.runtime.trainer.groups import Groups, NoTeacher, Teacher
from kubedistill.runtime.trainer.metrics import (
    LOCAL_NAMESPACE,
    TrainerMetrics,
    announce,
    publish_eval,
    publish_preparation,
    publish_step,
    serve_metrics,
)
from kubedistill.runtime.trainer.planning import Planner, StepPlan, await_teacher
from kubedistill.runtime.trainer.preflight import metrics_port_asked
from kubedistill.runtime.trainer.records import EvalRecord, RecordLog, TrainRecord, read_records
from kubedistill.runtime.trainer.report import Progress, plot_losses, print_summary, write_summary
from kubedistill.runtime.trainer.resume import Origin, check_resumable, check_start, is_finished, origin_of
from kubedistill.runtime.trainer.rollouts import RolloutLog
from kubedistill.runtime.trainer.sources import (
    BatchSource,
    DatasetBatches,
    MixedBatches,
    RolloutBatches,
    TeacherSampler,
    epoch_steps,
    prompt_of,
    prompts_left_out,
    steps_per_round,
)
from kubedistill.runtime.trainer.stopping import Stopping, Terminated
from kubedistill.runtime.trainer.tracking.opening import open_trackers, student_files
from kubedistill.runtime.trainer.tracking.sinks import TrackerFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    """What an `on_step` hook sees once a step is done (its followers synced, evaluated, checkpointed)."""

    state: TrainerState
    record: TrainRecord
    groups: Groups


@dataclass(frozen=True)
class RunOptions:
    output_dir: Path
    stop_after_steps: int | None = None
    """Stop once this many steps are done (the schedule still follows the spec, so a later run resumes)."""
    metrics_port: int | None = None
    """Port of /metrics; None reads KUBEDISTILL_METRICS_PORT (else the default, which alone may fall back to
    a free port when busy), 0 picks a free port."""
    namespace: str = LOCAL_NAMESPACE
    progress: bool = True
    print_summary: bool = True
    on_step: Callable[[StepEvent], None] | None = None
    """Called in the training loop after each step: for notebooks, benchmarks and tests (a fault injected
    at a known step)."""
    metrics: TrainerMetrics | None = None
    """/metrics already served (by the generation phase before it, so the operator saw its progress); None:
    the trainer makes and serves its own."""
    generation: Mapping[str, Any] | None = None
    """What the generation phase reports for `summary.json` (its counts and the tokens it paid for)."""
    stopping: Stopping = field(default_factory=Stopping)
    """Whether SIGTERM asked the run to stop: `kubedistill run` installs it as the signal's handler."""
    keep_prepared: bool = True
    """Keep the prepared data on the checkpoint volume (`data.cache`); `kubedistill inspect` only reads."""


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    metrics_file: Path

    def records(self) -> list[dict[str, Any]]:
        """Every record of the run (the resumed steps' too), from `metrics.jsonl`."""
        return list(read_records(self.metrics_file))


class Trainer:
    def __init__(self, job: DistillationJob, options: RunOptions) -> None:
        self.job = job
        self.options = options
        self.spec = job.spec
        self.tokenizer = load_tokenizer(student_tokenizer_path(job))
        self.algorithm = algorithm_for(self.spec)
        if self.spec.student.context_parallel > 1 and any(
            "micro_batch_extras" in vars(cls) for cls in self.algorithm.__mro__ if cls is not Algorithm
        ):
            # CEL refuses dskd and simpleCtkd by name; any other algorithm with extras (a plugin too) here.
            raise SpecError(
                "spec.student.contextParallel",
                f"algorithm {self.spec.distillation.algorithm} builds extras for each micro-batch "
                "(alignments or targets of the whole sequence), which context parallelism does not cut yet",
            )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        check_one_vocabulary(job)
        teacher_tokenizer = teacher_tokenizer_path(job)
        self.teacher_tokenizer = load_tokenizer(teacher_tokenizer) if teacher_tokenizer else None
        """Read once for every data source; None without a teacher."""
        if self.spec.mode == Mode.REINFORCEMENT and self.teacher_tokenizer is not None:
            check_teacher_vocabulary(self.spec, self.tokenizer, self.teacher_tokenizer)
        self.chat_clock = self._chat_clock()
        """The moment the chat templates see, whichever day the run renders the records on."""
        for tokenizer in (self.tokenizer, self.teacher_tokenizer):
            if tokenizer is not None:
                pin_chat_clock(tokenizer, self.chat_clock)
        self.images, self.teacher_images = self._image_processing()
        self.metrics = options.metrics or TrainerMetrics(options.namespace, job.name)
        """`kubedistill run` serves it before the data is prepared: the operator sees the preparing."""
        # On-policy (self-distillation too) trains on prompts; its eval data keeps the dataset's responses
        # to score. Mixing policies, the data keeps its responses too: the student answers their prompts.
        train_mode = Mode.ON_POLICY if self.spec.on_policy else self.spec.mode
        if self.spec.mixes_policies:
            train_mode = Mode.OFF_POLICY if self.spec.mode == Mode.ON_POLICY else self.spec.mode
        train, self.mixture = self._load_training(train_mode)
        self.train, bad_train = train.samples, train.bad_records
        self.eval: list[Sample] = []
        bad_eval: list[BadRecord] = []
        if self.spec.data.eval is not None:
            mode = Mode.OFF_POLICY if self.spec.on_policy else self.spec.mode
            evaluated = self._load(self.spec.data.eval, "spec.data.eval", mode)
            self.eval, bad_eval = evaluated.samples, evaluated.bad_records
        self.bad_records = bad_train + bad_eval
        for bad in self.bad_records:
            log.warning("skipped bad record %s", bad)
        self.truncated = [sample for sample in self.train + self.eval if sample.truncation]
        # A prepared set read back carries its hash: a restart compares without hashing every token.
        self.origin = origin_of(job, self.train, self.chat_clock, train_sha256=train.sha256)
        self.steps_per_epoch = epoch_steps(self.spec, len(self.train))
        self.prompts_left_out = prompts_left_out(self.spec, len(self.train))
        """On-policy: prompts of each epoch that fill no rollout round (reported, never dropped unsaid)."""
        if self.prompts_left_out:
            assert self.spec.rollout is not None
            log.warning(
                "%d of the %d prompts fill no round of spec.rollout.batchSize %d: each epoch leaves that "
                "many out (others each epoch)",
                self.prompts_left_out,
                len(self.train),
                self.spec.rollout.batch_size,
            )
        self.total_steps = self.steps_per_epoch * self.spec.training.epochs
        if self.spec.training.max_steps is not None:
            self.total_steps = min(self.total_steps, self.spec.training.max_steps)
        self.checkpoints = (
            CheckpointDirectory(Path(self.spec.checkpoint.path), self.spec.checkpoint.keep)
            if self.spec.checkpoint.path
            else None
        )
        self.steps_done: int | None = None
        """The step training reached (what an interrupted run stopped at); None before it started."""

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

    def start_from(self) -> Checkpoint | None:
        """spec.checkpoint.resumeFrom's checkpoint, whose student weights a job without a checkpoint of its
        own starts from; `ResumeRefused` when it cannot."""
        asked = self.spec.checkpoint.resume_from
        if asked is None:
            return None
        return check_start(find_checkpoint(Path(asked)), asked, self.origin, self.spec.checkpoint.path)

    def finished(self, checkpoint: Checkpoint | None) -> bool:
        """Whether this run has nothing left to do: trained to its stop step, and the output written."""
        return is_finished(checkpoint, self.stop_step, self.options.output_dir, self.job.name)

    def _chat_clock(self) -> datetime:
        """The moment the newest checkpoint's run rendered its records at (what a resume must render again),
        else now: a job's templates see one date, its first run's."""
        path = self.spec.checkpoint.path
        latest = find_checkpoint(Path(path)) if path else None
        recorded = Origin.from_json(latest.origin).chat_clock if latest and latest.origin else None
        return datetime.fromisoformat(recorded) if recorded else datetime.now().astimezone()

    def _load_training(self, mode: Mode) -> tuple[LoadedData, Mixture | None]:
        """spec.data.train's samples; or every spec.data.mixture source's end to end, and how each epoch
        draws from them."""
        if self.spec.data.mixture is None:
            assert self.spec.data.train is not None, "a rule asks for spec.data.train or spec.data.mixture"
            return self._load(self.spec.data.train, "spec.data.train", mode), None
        sources = self.spec.data.training_sources
        parts = [self._load(source, field_path, mode) for field_path, source in sources]
        weights = tuple(source.weight for source in self.spec.data.mixture)
        mixture = Mixture(tuple(len(part.samples) for part in parts), weights, self.spec.training.seed)
        for line in share_lines([field_path for field_path, _ in sources], mixture):
            log.info("%s", line)
        samples = [sample for part in parts for sample in part.samples]
        return LoadedData(samples, [bad for part in parts for bad in part.bad_records]), mixture

    def _load(self, source: DataSource, field_path: str, mode: Mode) -> LoadedData:
        loaded = load_samples(
            source,
            self.spec.data,
            self.tokenizer,
            mode=mode,
            teacher_tokenizer=self.teacher_tokenizer,
            field=field_path,
            cross_tokenizer=self.algorithm.cross_tokenizer,
            # Held-out data need no endpoint's scores: without them it is evaluated by cross-entropy.
            sparse_targets=self.algorithm.sparse_targets and field_path != "spec.data.eval",
            images=self.images,
            teacher_images=self.teacher_images,
            # Prepared once: a restarted or retried job maps the set from its checkpoint volume.
            cache=self._prepared_folder(),
            on_progress=lambda progress: publish_preparation(self.metrics, progress),
            # Attached to a cluster of several nodes (a RayJob's), its nodes tokenise a set beyond the head's
            # cores.
            on_ray=ray_cluster_nodes() > 1,
        )
        return loaded

    def _prepared_folder(self) -> Path | None:
        path = self.spec.checkpoint.path
        return Path(path) / CACHE_FOLDER if path and self.options.keep_prepared else None

    def _image_processing(self) -> tuple[ImageProcessing | None, ImageProcessing | None]:
        """The student's image processing (None: a text model) and the teacher's, when it has its own.

        A vision-language student learns from a teacher that sees the same images: a text-only teacher
        would score the image tokens as text, so it is refused here, before any record is read."""
        images = load_image_processing(self.spec.student.model, self.tokenizer)
        if images is not None and self.spec.student.context_parallel > 1:
            # The vision tower and the multimodal rotary positions see the whole sequence: no chunk can.
            raise SpecError(
                "spec.student.contextParallel",
                f"the student {self.spec.student.model} is a vision-language model, whose sequences context "
                "parallelism does not cut yet; remove the field",
            )
        if images is None or not has_teacher(self.job):
            return images, None
        teacher = teacher_spec(self.job)
        if teacher.model is None or teacher.model == self.spec.student.model:
            return images, None
        assert self.teacher_tokenizer is not None, "a job with a teacher has its tokenizer"
        teacher_images = load_image_processing(teacher.model, self.teacher_tokenizer, "spec.teacher.model")
        if teacher_images is None:
            raise SpecError(
                "spec.teacher.model",
                f"the student {self.spec.student.model} is a vision-language model and the teacher "
                f"{teacher.model} has no image processor (preprocessor_config.json); distil a "
                "vision-language student from a vision-language teacher",
            )
        return images, teacher_images

    def run(self) -> RunResult:
        self.options.output_dir.mkdir(parents=True, exist_ok=True)
        self._serve_metrics()
        self.metrics.set(telemetry.TOTAL_STEPS, self.total_steps)
        self.metrics.add(telemetry.BAD_RECORDS, len(self.bad_records))
        self.metrics.add(telemetry.TRUNCATED_RECORDS, records_of(self.truncated))
        training: Training | None = None
        succeeded = False
        try:
            starting = time.perf_counter()
            groups = Groups.start(self.job, self.total_steps, ClusterView.current())
            try:
                training = Training(self, groups, start_seconds=time.perf_counter() - starting)
                result = training.run()
                succeeded = True
            except BaseException:
                # A failed collective can leave ranks waiting for a peer: stop them without asking.
                groups.shutdown(graceful=False)
                raise
            groups.shutdown()
        except (KeyboardInterrupt, Terminated):
            # What was done stays readable; the checkpoints hold what a re-run goes on from.
            if training is not None and training.records.totals.last is not None:
                training.report(training.state, interrupted=True)
            raise
        finally:
            if training is not None:
                # Their last calls sent (the student's upload among them) and their runs ended.
                training.trackers.close(succeeded)
            self.metrics.close()
        return result

    def evaluate_students(self, models: list[str]) -> list[dict[str, Any]]:
        """Evaluate each student model (a path, as on disk) against this job's teacher on data.eval, without
        training; the teacher is started once for all of them. The models share the job's tokenizer."""
        cluster = ClusterView.current()
        teacher: Teacher = start_teachers(self.job, cluster) if has_teacher(self.job) else NoTeacher()
        records = []
        try:
            for model in models:
                student = self.spec.student.model_copy(update={"model": model})
                job = self.job.model_copy(update={"spec": self.spec.model_copy(update={"student": student})})
                groups = Groups(
                    job, self.total_steps, StudentActorGroup(job, self.total_steps, cluster), teacher, None
                )
                try:
                    planner = self.planner(groups, gpu_policy(groups))
                    record = eval_record(self.job, step=0, stats=evaluate(groups, planner, self.eval))
                finally:
                    groups.students.shutdown()
                records.append(record.to_json())
        finally:
            teacher.shutdown()
        return records

    def planner(self, groups: Groups, gpus: GpuPolicy) -> Planner:
        """`gpus`: the run's one policy, whose turns the planner's teacher work takes (a second policy over
        the same groups would wake and put to sleep engines the first holds awake)."""
        training = self.spec.training
        return Planner(
            groups,
            gpus,
            self.algorithm,
            self.pad_id,
            training.micro_batch_size,
            training.max_tokens_per_device,
            # Packing is exact for text models only: a vision-language model computes its (multimodal
            # rotary) positions over the whole row (`MicroBatch.from_samples`).
            packing=training.packing and self.images is None,
            context_parallel=self.spec.student.context_parallel,
        )

    def _serve_metrics(self) -> None:
        if self.metrics.port is None:
            port = self.options.metrics_port
            serve_metrics(self.metrics, port, metrics_port_asked(port))
        # Said here, in the run's log, though `kubedistill run` served it from the data's preparation on: a
        # job refused before it trains prints its refusal alone.
        announce(self.metrics)


class Training:
    """One run of a `Trainer`'s job on started groups: every part built here, at once."""

    def __init__(self, trainer: Trainer, groups: Groups, start_seconds: float) -> None:
        self.trainer = trainer
        self.start_seconds = start_seconds
        """How long the groups took to start: actors up, their imports done, models loaded."""
        self.job = trainer.job
        self.spec = trainer.spec
        self.groups = groups
        self.kd = kd_config(self.job)
        self.gpus = gpu_policy(groups)
        self.rollouts = self._rollout_log()
        self.source = self._source()
        # Mixing policies, the training samples hold the dataset's answers: the probe asks their prompt.
        first = prompt_of(trainer.train[0]) if self.spec.mixes_policies else trainer.train[0]
        probe = Probe(first.input_ids.tolist(), self._probe_tokens(), trainer.tokenizer.decode, first.images)
        self.followers = followers_of(groups, self.source, self.gpus, probe)
        self.gpus.start()
        self.planner = trainer.planner(groups, self.gpus)
        self.recoveries: list[dict[str, Any]] = []
        """Failures survived: the step training went on from, and what failed."""
        latest = trainer.resume_point()
        resume_step = latest.state.step if latest else None
        self.trackers = open_trackers(self.job, trainer.options.output_dir, resume_step, self._tracker_failed)
        for tracker, url in self.trackers.urls.items():
            trainer.metrics.set_tracker_url(tracker, url)
        self.records = RecordLog(trainer.options.output_dir, resume_step, sink=self.trackers.record)
        if self.rollouts is not None:
            self.rollouts.rewind(latest.state.step if latest else None)
        self.state = self._resume(latest, restarted=False)
        """Where training stands, step by step (what a fault or an interruption finds)."""
        trainer.steps_done = self.state.step

    def _source(self) -> BatchSource:
        rollout = self.groups.rollout
        if rollout is None:
            training = self.spec.training
            return DatasetBatches(
                self.trainer.train, training.global_batch_size, training.seed, self.trainer.mixture
            )
        batches = (
            partial(
                MixedBatches,
                teacher=self._teacher_sampler(),
                teacher_turn=lambda: self.gpus.turn(self.groups.teacher),
            )
            if self.spec.mixes_policies
            else RolloutBatches
        )
        return batches(
            self.trainer.train,
            self.job,
            rollout,
            self.spec.data.max_length,
            turn=lambda: self.gpus.turn(rollout),
            on_round=self.rollouts.sampled if self.rollouts is not None else None,
            mixture=self.trainer.mixture,
        )

    def _teacher_sampler(self) -> TeacherSampler | None:
        """Sequence-level KD (spec.rollout.sequenceKd): the teacher's engines answer the prompts of the steps
        not drawn on-policy."""
        rollout = self.spec.rollout
        if rollout is None or not rollout.sequence_kd:
            return None
        return self._teachers_answers

    def _teachers_answers(
        self, prompts: list[list[int]], sampling: SamplingConfig, images: list[ImageInputs | None] | None
    ) -> list[list[int]]:
        # The group of the moment: a restarted teacher is a new group. Its engine dying mid-answer is the
        # failure the student ranks meet reading its hidden states: restart it and retry the step.
        try:
            return generate_on(self.groups.teacher.actors, prompts, sampling, images)
        except RayError as error:
            raise TeacherUnavailable(
                f"the teacher's engines could not answer the step's prompts: {error}"
            ) from error

    def _rollout_log(self) -> RolloutLog | None:
        """On-policy: where the sampled responses go (`<output>/rollouts/`); None without a rollout group."""
        rollout = self.spec.rollout
        if self.groups.rollout is None or rollout is None:
            return None
        tokenizer = self.trainer.tokenizer
        return RolloutLog(
            self.trainer.options.output_dir,
            self.spec.output.rollout_rounds,
            tokenizer.decode,
            tokenizer.eos_token_id,
            rollout.max_new_tokens,
            steps_per_round(self.spec),
            self.spec.training.log_every_steps,
            sink=lambda step, records: self.trackers.rollouts(step, records),
        )

    def _probe_tokens(self) -> int:
        return self.spec.rollout.max_new_tokens if self.spec.rollout is not None else 0

    def run(self) -> RunResult:
        training = time.perf_counter()
        state = self._train(self.state)
        if self.rollouts is not None:
            self.rollouts.flush()
        train_seconds = time.perf_counter() - training
        self._final_evaluation(state)
        self.groups.students.export(str(self.trainer.options.output_dir))
        if self.spec.tracking.upload_student:
            self.trackers.upload(student_files(self.trainer.options.output_dir), "student")
        checkpoints = self.trainer.checkpoints
        if checkpoints and (
            self.records.totals.last is None or state.step % self.spec.checkpoint.every_steps
        ):
            self._save(state)
        summary = self.report(state, train_seconds=train_seconds)
        if self.trainer.options.print_summary:
            print_summary(summary)
        return RunResult(summary, self.records.path)

    # -- the loop -------------------------------------------------------------------------------------------

    def _train(self, state: TrainerState) -> TrainerState:
        """Train to the end, recovering from dead actors up to spec.backoffLimit times: a dead teacher is
        restarted and the step retried; dead student ranks are restarted from the newest checkpoint."""
        while True:
            try:
                return self._train_steps(state)
            except (RayActorError, TeacherUnavailable) as error:
                if len(self.recoveries) >= self.spec.backoff_limit:
                    raise
                state = self._recover(error, self.state)
                self.recoveries.append({"step": state.step, "error": _failure_kind(error)})
                self._reached(state)

    def _train_steps(self, state: TrainerState) -> TrainerState:
        stop = self.trainer.stop_step
        options = self.trainer.options
        progress = Progress(
            self.trainer.total_steps,
            state.step,
            self.job.name,
            self.spec.training.log_every_steps,
            options.progress,
        )
        plans = deque(self._plans(state) if state.step < stop else [])
        """Laid out ahead, their teacher work dispatched: the next step's, or a colocated wake's steps."""
        stopping = options.stopping
        stopping.graceful = True
        try:
            while plans:
                plan = plans.popleft()
                started = time.perf_counter()
                teacher_seconds = await_teacher(plan)
                following = self._advance(state)
                calling = time.perf_counter()
                step = self.groups.students.start_train_step(plan.work, plan.normalizer)
                # While the ranks compute, the next step is laid out and its teacher work goes out.
                prefetch = (
                    not plans
                    and following.step < stop
                    and self.gpus.overlaps
                    and not self.followers.blocks_prefetch(following)
                )
                planning = time.perf_counter()
                if prefetch:
                    # A teacher dying as it answers the next step's prompts (sequence-level KD) is met again
                    # when that step is planned after this one: retried now, this step would train twice.
                    with contextlib.suppress(TeacherUnavailable):
                        plans.extend(self._plans(following))
                planned = time.perf_counter()
                stats = self.groups.students.step_result(step)
                done = time.perf_counter()
                record = self._train_record(
                    following.step,
                    state.epoch,
                    stats,
                    plan,
                    done - started,
                    teacher_seconds,
                    planned - planning,
                    done - calling,
                    self.source.trains_own_samples(state.epoch, state.batch_in_epoch),
                )
                state = replace(following, skipped_steps=state.skipped_steps + int(stats.skipped))
                self.records.append(record)
                publish_step(self.trainer.metrics, record, self.trainer.total_steps)
                progress.update(record)
                if self.rollouts is not None:
                    self.rollouts.trained(record.step, plan.in_step_order(stats.sample_divergences))
                state = self._after_step(state)
                self._reached(state)
                if options.on_step is not None:
                    options.on_step(StepEvent(state, record, self.groups))
                if stopping.requested and state.step < stop:
                    self._stop(state)
                if not plans and state.step < stop:
                    plans.extend(self._plans(state))
        finally:
            stopping.graceful = False
            progress.close()
        return state

    def _stop(self, state: TrainerState) -> None:
        """SIGTERM came during the step just done: checkpoint it (unless it was checkpointed as due, or is
        inside an on-policy round, whose samples came from weights no checkpoint holds), then stop."""
        log.warning("SIGTERM: stopping after step %d", state.step)
        if (
            self.trainer.checkpoints
            and not self._checkpoint_due(state)
            and self.source.resumable_at(state.batch_in_epoch)
        ):
            self._save(state)
        raise Terminated

    def _plans(self, state: TrainerState) -> list[StepPlan]:
        """The step from `state`, and colocated the steps after it that the same wake of the teacher scores
        (`steps_of_a_wake`; of several teachers, the longest wake's). Their batches come first: a new rollout
        round takes the rollout engines' turn."""
        states = steps_of_a_wake(
            state,
            self.gpus.steps_per_wake,
            lambda following: following.step < self.trainer.stop_step,
            self._advance,
            self.followers.blocks_prefetch,
        )
        batches = [self.source.samples(s.epoch, s.batch_in_epoch) for s in states]
        return self.planner.train_steps([(b.samples, b.generation_seconds) for b in batches])

    def _after_step(self, state: TrainerState) -> TrainerState:
        """What follows a step, in order: weights to the engines that follow the student, eval, checkpoint."""
        for record in self.followers.sync(state):
            self.records.append(record)
        every = self.spec.training.eval_every_steps
        if every and self.trainer.eval and state.step % every == 0 and state.step < self.trainer.total_steps:
            self._evaluate(state.step)
        if self.trainer.checkpoints and self._checkpoint_due(state):
            self._save(state)
        return state

    def _reached(self, state: TrainerState) -> None:
        self.state = state
        self.trainer.steps_done = state.step

    def _advance(self, state: TrainerState) -> TrainerState:
        batch = state.batch_in_epoch + 1
        epoch = state.epoch
        if batch == self.trainer.steps_per_epoch:
            epoch, batch = epoch + 1, 0
        return replace(state, step=state.step + 1, epoch=epoch, batch_in_epoch=batch)

    def _train_record(
        self,
        step: int,
        epoch: int,
        stats: StepStats,
        plan: StepPlan,
        seconds: float,
        teacher_seconds: float,
        plan_seconds: float,
        call_seconds: float,
        on_policy: bool,
    ) -> TrainRecord:
        targets = max(stats.num_targets, 1)
        kd_loss = stats.kd_sum / targets
        ce_loss = stats.ce_sum / targets
        itemsize = compute_dtype(self.spec.training.precision).itemsize
        figures = self.trainer.algorithm.summarize(stats.figures)
        loss = figures.pop("loss", (1.0 - self.kd.kd_ratio) * ce_loss + self.kd.kd_ratio * kd_loss)
        return TrainRecord(
            step=step,
            epoch=epoch,
            loss=loss,
            kd_loss=kd_loss,
            ce_loss=ce_loss,
            grad_norm=stats.grad_norm,
            learning_rate=stats.learning_rate,
            tokens=stats.num_tokens,
            targets=stats.num_targets,
            skipped=stats.skipped,
            step_seconds=seconds,
            tokens_per_second=stats.num_tokens / seconds if seconds > 0 else 0.0,
            teacher_seconds=teacher_seconds,
            plan_seconds=plan_seconds,
            student_call_seconds=call_seconds,
            rollout_seconds=plan.rollout_seconds,
            on_policy=on_policy,
            transfer_bytes=plan.teacher_positions * self.groups.teacher.hidden_size * itemsize,
            timings=stats.timings(),
            figures=figures,
        )

    # -- evaluation, checkpoints, recovery ------------------------------------------------------------------

    def _evaluate(self, step: int) -> None:
        record = eval_record(self.job, step, evaluate(self.groups, self.planner, self.trainer.eval))
        self.records.append(record)
        publish_eval(self.trainer.metrics, record)
        log.info("eval at step %d: %s", step, record)

    def _final_evaluation(self, state: TrainerState) -> None:
        last = self.records.totals.last
        # A run resumed from its own final checkpoint (to export elsewhere) was evaluated there already.
        if self.trainer.eval and not (last and last["kind"] == "eval" and last["step"] == state.step):
            self._evaluate(state.step)

    def _checkpoint_due(self, state: TrainerState) -> bool:
        every = self.spec.checkpoint.every_steps
        return state.step % every == 0 and self.source.resumable_at(state.batch_in_epoch)

    def _save(self, state: TrainerState) -> None:
        checkpoints = self.trainer.checkpoints
        assert checkpoints is not None
        staging = checkpoints.staging(state.step)
        self.groups.students.save_checkpoint(str(staging))
        checkpoints.commit(staging, state, self.trainer.origin.to_json())
        self.trainer.metrics.set(telemetry.LAST_CHECKPOINT_STEP, state.step)

    def _resume(self, latest: Checkpoint | None, restarted: bool) -> TrainerState:
        """Where training goes on from: the newest checkpoint, loaded into the ranks, with every engine that
        follows the student brought to its weights; else step 0, from spec.checkpoint.resumeFrom's weights
        where it is set (after a restart of the ranks, their followers go back to those weights too)."""
        if latest is None:
            start = self.trainer.start_from()
            if start is not None:
                log.info("starting from the student weights of %s (step %d)", start.path, start.state.step)
                self.groups.students.load_weights(str(start.path))
            if restarted or start is not None:
                self.followers.restore()
            return TrainerState(step=0, epoch=0, batch_in_epoch=0, bad_records=len(self.trainer.bad_records))
        log.info("resuming from %s (step %d)", latest.path, latest.state.step)
        self.groups.students.load_checkpoint(str(latest.path))
        self.followers.restore()
        self.trainer.metrics.set(telemetry.STEP, latest.state.step)
        self.trainer.metrics.set(telemetry.LAST_CHECKPOINT_STEP, latest.state.step)
        return replace(latest.state, bad_records=len(self.trainer.bad_records))

    def _recover(self, error: Exception, state: TrainerState) -> TrainerState:
        if isinstance(error, TeacherUnavailable):
            log.warning(
                "a teacher engine failed at step %d: restarting it, retrying the step", state.step + 1
            )
            self.groups.restart_teacher()
            self.gpus.start()
            self.followers.restore(Role.TEACHER)
            return state
        log.warning(
            "a student rank failed at step %d (%s): restarting from the newest checkpoint",
            state.step + 1,
            _failure_kind(error),
        )
        self.groups.restart_students()
        self.followers.rejoin()
        latest = self.trainer.resume_point()
        self.records.rewind(latest.state.step if latest else None)
        if self.rollouts is not None:
            self.rollouts.rewind(latest.state.step if latest else None)
        return self._resume(latest, restarted=True)

    # -- what the run leaves --------------------------------------------------------------------------------

    def report(
        self, state: TrainerState, interrupted: bool = False, train_seconds: float | None = None
    ) -> dict[str, Any]:
        """The loss plot and `summary.json` of the run so far (`metrics.jsonl` is written as it goes);
        `train_seconds`: the training loop's wall time, once it is over."""
        trainer = self.trainer
        out = trainer.options.output_dir
        totals = self.records.totals
        trains = totals.train_steps
        summary: dict[str, Any] = {
            "job": self.job.name,
            "mode": str(self.spec.mode),
            "steps": state.step,
            "total_steps": trainer.total_steps,
            "final_loss": totals.last_train["loss"] if totals.last_train else None,
            "start_seconds": self.start_seconds,
            "train_seconds": train_seconds,
            "mean_step_seconds": totals.step_seconds / trains if trains else None,
            "mean_tokens_per_second": totals.tokens_per_second / trains if trains else None,
            "transfer_bytes": totals.transfer_bytes,
            "skipped_steps": state.skipped_steps,
            "recoveries": self.recoveries,
            "wakes": dict(self.gpus.wakes),
            "bad_records": len(trainer.bad_records),
            "bad_record_sources": [str(bad) for bad in trainer.bad_records[:20]],
            "prompts_left_out_per_epoch": trainer.prompts_left_out,
            "truncated_records": records_of(trainer.truncated),
            "truncated_record_sources": [
                f"{sample.source}: {sample.truncation}" for sample in trainer.truncated[:20]
            ],
            "output_dir": str(out),
        }
        if interrupted:
            summary["interrupted"] = True
        if trainer.options.generation is not None:
            summary["generation"] = dict(trainer.options.generation)
        if totals.last_eval:
            summary.update(
                {k: v for k, v in totals.last_eval.items() if k.startswith("eval_") and v is not None}
            )
        if trains:
            summary["loss_plot"] = str(plot_losses(out, list(read_records(self.records.path)), self.job.name))
        summary["metrics_file"] = str(self.records.path)
        write_summary(out, summary)
        self.trackers.summary(summary)
        return summary

    def _tracker_failed(self, failure: TrackerFailure) -> None:
        self.trainer.metrics.add(telemetry.TRACKER_ERRORS, 1)


def evaluate(groups: Groups, planner: Planner, samples: list[Sample]) -> EvalStats:
    plan = planner.evaluation(samples)
    return groups.students.evaluate(plan.work, plan.normalizer)


def eval_record(job: DistillationJob, step: int, stats: EvalStats) -> EvalRecord:
    targets = max(stats.num_targets, 1)
    teacher = has_teacher(job)
    return EvalRecord(
        step=step,
        eval_ce_loss=stats.ce_sum / targets,
        eval_kd_divergence=stats.kd_sum / targets if teacher else None,
        eval_teacher_agreement=stats.agreements / targets if teacher else None,
        eval_tokens=stats.num_targets,
        figures=algorithm_for(job.spec).summarize(stats.figures),
    )


def _failure_kind(error: Exception) -> str:
    """What failed, without Ray's wrapping (a failure inside an actor arrives as RayTaskError(<cause>))."""
    return "TeacherUnavailable" if isinstance(error, TeacherUnavailable) else type(error).__name__
