"""One student rank: the FSDP2-sharded student, its optimizer and schedule, one train step at a time.

A plain object (the Ray actor around it only resolves object refs), so it runs in tests on gloo without Ray.
"""

import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import LoraExport, Mode, OnNonFinite
from kubedistill.runtime.algorithms.base import ALGORITHMS, AlgorithmContext
from kubedistill.runtime.models.loading import (
    compute_dtype,
    load_causal_lm,
    load_lm_head_weight,
    load_tokenizer,
)
from kubedistill.runtime.models.roles import (
    kd_config,
    student_tokenizer_path,
    teacher_model_path,
    teacher_tokenizer_path,
)
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.lora import apply_lora, merged_weights, scaling
from kubedistill.runtime.student.module import DistillationModule
from kubedistill.runtime.student.parallelize import apply_fsdp, device_mesh, process_group_backend
from kubedistill.runtime.student.schedule import lr_factor
from kubedistill.runtime.student.shared_output import share_exported_files

OptimizerPlace = Literal["cpu", "device"]
"""Where the optimizer's state lives: the CPU while a colocated engine has the GPU, or the rank's device."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm was NaN or infinite and spec.training.onNonFinite is fail."""


@dataclass(frozen=True)
class StepStats:
    kd_sum: float
    ce_sum: float
    num_targets: int
    num_tokens: int
    grad_norm: float
    learning_rate: float
    skipped: bool
    compute_seconds: float = 0.0
    """Forward and backward passes of all micro-batches (with their reduce-scatters), on rank 0."""
    backbone_seconds: float = 0.0
    """Of `compute_seconds`: the student backbone's forward passes (FSDP2 all-gathers included)."""
    loss_seconds: float = 0.0
    """Of `compute_seconds`: the loss's chunk loop, which computes its gradients in the forward."""
    backward_seconds: float = 0.0
    """Of `compute_seconds`: the backward passes (FSDP2 reduce-scatters included)."""
    optimizer_seconds: float = 0.0
    """Gradient clipping and the optimizer step, on rank 0."""
    fetch_seconds: float = 0.0
    """Reading the teacher's hidden states from the object store, on rank 0 (set by the actor)."""
    actor_seconds: float = 0.0
    """The whole call inside rank 0's actor; what the driver waited beyond it is Ray's (set by the actor)."""

    def timings(self) -> dict[str, float]:
        """Every `*_seconds` figure, by name: where rank 0's step went."""
        return {name: value for name, value in asdict(self).items() if name.endswith("_seconds")}


@dataclass(frozen=True)
class EvalStats:
    kd_sum: float
    ce_sum: float
    num_targets: int
    agreements: int


@dataclass(frozen=True)
class RankAddress:
    rank: int
    world_size: int
    master_addr: str
    master_port: int


class StudentWorker:
    def __init__(self, job: DistillationJob, address: RankAddress, total_steps: int) -> None:
        self.job = job
        self.address = address
        self.total_steps = total_steps
        spec = job.spec
        use_cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        dist.init_process_group(
            backend=process_group_backend(self.device.type),
            init_method=f"tcp://{address.master_addr}:{address.master_port}",
            rank=address.rank,
            world_size=address.world_size,
        )
        torch.manual_seed(spec.training.seed)
        dtype = compute_dtype(spec.training.precision)
        self.tokenizer = load_tokenizer(student_tokenizer_path(job))
        student = load_causal_lm(spec.student.model, torch.float32)
        if spec.student.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = spec.student.lora if spec.student.lora.rank > 0 else None
        if self.lora is not None:
            student = apply_lora(student, self.lora)
        teacher_path = teacher_model_path(job)
        teacher_head = (
            None if teacher_path is None else load_lm_head_weight(teacher_path, dtype).to(self.device)
        )
        algorithm = ALGORITHMS.get(spec.distillation.algorithm)(
            AlgorithmContext(
                config=kd_config(job),
                student_hidden_size=int(student.config.hidden_size),
                teacher_hidden_size=None if teacher_head is None else int(teacher_head.shape[1]),
                student_tokenizer=student_tokenizer_path(job),
                teacher_tokenizer=teacher_tokenizer_path(job),
                teacher_model=teacher_path,
                distillation=spec.distillation,
            )
        )
        self.module = DistillationModule(student, algorithm, teacher_head).to(self.device)
        mesh = device_mesh(self.device.type, address.world_size, spec.student.fsdp_shard_size)
        apply_fsdp(self.module, student, mesh, param_dtype=dtype, cpu_offload=spec.student.cpu_offload)
        training = spec.training
        algorithm_parameters = {id(p) for p in self.module.algorithm.parameters()}
        groups = [
            {
                "params": [
                    p
                    for p in self.module.parameters()
                    if p.requires_grad and id(p) not in algorithm_parameters
                ]
            },
            {
                "params": [p for p in self.module.algorithm.parameters() if p.requires_grad],
                "lr": spec.distillation.projector_learning_rate,
            },
        ]
        self.optimizer = torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=training.learning_rate,
            betas=(training.adam_betas[0], training.adam_betas[1]),
            weight_decay=training.weight_decay,
            # On CPU torch picks the per-parameter loop, one dispatch per op and DTensor parameter; foreach
            # does each op once over all parameters.
            foreach=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, training, total_steps)
        )
        self.ema_decay = spec.distillation.teacher_ema_decay
        # Self-distillation: the weights the teacher holds live here too, sharded like the student and saved
        # in its checkpoints, so a resumed run (or a restarted teacher) gets the teacher an uninterrupted run
        # has: the moving average (teacherEmaDecay; the engine itself never has to average), or the
        # student's weights at the last copy when copies are rarer than every step (teacherUpdateFreq > 1).
        # A teacher copied after every step is the student itself and needs no copy of its own.
        keeps_teacher = spec.mode == Mode.SELF_DISTILLATION and (
            self.ema_decay is not None or spec.distillation.teacher_update_freq > 1
        )
        self.teacher_weights: dict[str, torch.Tensor] = (
            {name: p.detach().clone() for name, p in self.module.student.named_parameters()}
            if keeps_teacher
            else {}
        )

    # -- training -------------------------------------------------------------------------------------------

    def train_step(
        self, micro_batches: list[MicroBatch], teacher_hidden: list[torch.Tensor | None], normalizer: int
    ) -> StepStats:
        self.module.train()
        sums = torch.zeros(4, dtype=torch.float64)
        # FSDP2 averages gradients over ranks, while the loss is already normalised by the global batch's
        # token count: scaling by the world size makes the reduced gradient the global batch's.
        scale = float(self.address.world_size)
        started = time.perf_counter()
        backbone = loss = backward = 0.0
        last = len(micro_batches) - 1
        for index, (batch, hidden) in enumerate(zip(micro_batches, teacher_hidden, strict=True)):
            if self.address.world_size == 1:
                # On one rank a reduce-scatter only copies the gradient into its shard, which is the whole
                # gradient: once, after the last micro-batch, is enough (on more ranks the unsharded
                # gradients kept meanwhile would cost memory, so every micro-batch reduces its own).
                self.module.set_requires_gradient_sync(index == last)
            forward = self.module(batch, hidden, float(normalizer))
            output = forward.loss
            backbone, loss = backbone + forward.backbone_seconds, loss + forward.loss_seconds
            backward_started = time.perf_counter()
            (output.loss * scale).backward()
            backward += time.perf_counter() - backward_started
            sums += torch.tensor(
                [output.kd_sum.item(), output.ce_sum.item(), output.num_tokens, batch.num_tokens],
                dtype=torch.float64,
            )
        dist.all_reduce(sums)
        computed = time.perf_counter()
        grad_norm = _full(
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.job.spec.training.max_grad_norm)
        )
        learning_rate = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(grad_norm) and bool(torch.isfinite(sums).all())
        if not finite and self.job.spec.training.on_non_finite == OnNonFinite.FAIL:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"non-finite loss or gradient (grad norm {grad_norm}); spec.training.onNonFinite is fail"
            )
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            self._update_ema()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(
            kd_sum=float(sums[0]),
            ce_sum=float(sums[1]),
            num_targets=int(sums[2]),
            num_tokens=int(sums[3]),
            grad_norm=grad_norm,
            learning_rate=learning_rate,
            skipped=not finite,
            compute_seconds=computed - started,
            backbone_seconds=backbone,
            loss_seconds=loss,
            backward_seconds=backward,
            optimizer_seconds=time.perf_counter() - computed,
        )

    def move_optimizer_state(self, place: OptimizerPlace) -> None:
        """Colocation: the optimizer's state leaves the GPU while the teacher or rollout engine uses it
        ("cpu"), and comes back for the student's step ("device")."""
        target = self.device if place == "device" else torch.device("cpu")
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(target, non_blocking=True)
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    @torch.no_grad()
    def evaluate(
        self, micro_batches: list[MicroBatch], teacher_hidden: list[torch.Tensor | None], normalizer: int
    ) -> EvalStats:
        self.module.eval()
        sums = torch.zeros(4, dtype=torch.float64)
        for batch, hidden in zip(micro_batches, teacher_hidden, strict=True):
            output = self.module(batch, hidden, float(normalizer), measure_agreement=True)
            loss = output.loss
            sums += torch.tensor(
                [loss.kd_sum.item(), loss.ce_sum.item(), loss.num_tokens, output.agreements],
                dtype=torch.float64,
            )
        dist.all_reduce(sums)
        return EvalStats(
            kd_sum=float(sums[0]), ce_sum=float(sums[1]), num_targets=int(sums[2]), agreements=int(sums[3])
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_decay is None:
            return
        for name, parameter in self.module.student.named_parameters():
            self.teacher_weights[name].lerp_(parameter.detach(), 1.0 - self.ema_decay)

    @torch.no_grad()
    def take_teacher_weights(self) -> None:
        """Self-distillation, at a copy: the teacher's weights become the student's current ones (an EMA
        teacher's are the average already)."""
        if self.ema_decay is not None:
            return
        for name, parameter in self.module.student.named_parameters():
            if name in self.teacher_weights:
                self.teacher_weights[name].copy_(parameter.detach())

    # -- weights for other engines --------------------------------------------------------------------------

    def full_weight_buckets(
        self, bucket_bytes: int, teacher: bool = False, on_device: bool = False
    ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The student's whole weights by Hugging Face name, in buckets of about `bucket_bytes` (collective).

        Every rank runs the same all-gathers, one parameter at a time, and only rank 0 keeps what they return:
        the biggest thing on a rank is one bucket plus one parameter, never a second copy of the model.
        Other ranks yield empty buckets at the same points. The tensors are on the CPU (to travel through
        Ray), or on this rank's device (`on_device`, to be broadcast from there). `teacher`: the weights the
        self-distillation teacher holds instead of the student's.
        """
        dtype = compute_dtype(self.job.spec.training.precision)
        keep = self.address.rank == 0
        where = self.device if on_device else torch.device("cpu")
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, full in self._engine_weights(teacher):
            size += full.numel() * dtype.itemsize
            if keep:
                bucket.append((name, full.to(where, dtype)))
            del full
            if size >= bucket_bytes:
                yield bucket
                bucket, size = [], 0
        if size:
            yield bucket

    def _engine_weights(self, teacher: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """Whole weights by the base architecture's names (LoRA merged), one all-gather at a time."""
        gathered = (
            (name, _full_tensor(self._teacher_or_student(name, parameter) if teacher else parameter.detach()))
            for name, parameter in self.module.student.named_parameters()
        )
        if self.lora is None:
            return gathered
        return merged_weights(gathered, scaling(self.lora))

    def _teacher_or_student(self, name: str, parameter: torch.Tensor) -> torch.Tensor:
        """The teacher's copy of a parameter where it keeps one, else the student's own."""
        return self.teacher_weights.get(name, parameter).detach()

    @torch.no_grad()
    def refresh_teacher_head(self) -> None:
        """Self-distillation: the teacher's output head is the one in its weights, so the frozen copy every
        rank uses to rebuild teacher logits must follow each teacher update (collective)."""
        head = self.module.student.get_output_embeddings().weight
        name = next(n for n, p in self.module.student.named_parameters() if p is head)
        head = self._teacher_or_student(name, head)
        self.module.teacher_head.copy_(_full_tensor(head).to(self.module.teacher_head.dtype))

    # -- checkpoints ----------------------------------------------------------------------------------------

    def save_checkpoint(self, directory: str) -> None:
        """Write this rank's shards (DCP) and its RNG and schedule state into `directory` (collective)."""
        model_state, optimizer_state = get_state_dict(self.module, self.optimizer)
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state, "teacher": self.teacher_weights},
            checkpoint_id=directory,
        )
        torch.save(
            {"scheduler": self.scheduler.state_dict(), "rng": _rng_state()},
            Path(directory) / f"rank-{self.address.rank}.pt",
        )
        dist.barrier()

    def load_checkpoint(self, directory: str) -> None:
        model_state, optimizer_state = get_state_dict(self.module, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, "teacher": self.teacher_weights}
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(
            self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        extra = torch.load(Path(directory) / f"rank-{self.address.rank}.pt", weights_only=False)
        self.scheduler.load_state_dict(extra["scheduler"])
        _set_rng_state(extra["rng"])
        dist.barrier()

    def export(self, directory: str) -> None:
        """Gather the full student on rank 0 and save it with its tokenizer (safetensors) (collective)."""
        state = get_model_state_dict(
            self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.address.rank == 0:
            prefix = "student."
            student_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            student = self.module.student
            if self.lora is not None and self.lora.export == LoraExport.ADAPTER:
                student.save_pretrained(directory, state_dict=student_state)
            elif self.lora is not None:
                merged = dict(merged_weights(student_state.items(), scaling(self.lora)))
                student.get_base_model().save_pretrained(directory, state_dict=merged)
            else:
                student.save_pretrained(directory, state_dict=student_state)
            self.tokenizer.save_pretrained(directory)
            share_exported_files(Path(directory))
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def all_ranks_agree(ok: bool) -> bool:
    """True on every rank when `ok` is true on every rank (collective, on a CPU tensor: gloo's part of the
    default group, see `process_group_backend`)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP2 shard (a collective), or the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def _full(value: torch.Tensor) -> float:
    # clip_grad_norm_ over DTensor gradients returns a DTensor.
    return float(_full_tensor(value))


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
