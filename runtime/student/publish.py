"""What leaves a student rank whole: its weights for the engines that follow it (rollout engines, a
self-distillation teacher), and the exported model.

Every rank runs the same all-gathers, one parameter at a time, and only rank 0 keeps what they return: the
biggest thing on a rank is one bucket plus one parameter, never a second copy of the model.

Exported files must be readable by the other pods that mount the output volume (an evaluation job, a server),
which often run as another user. safetensors 0.8.0 writes `model.safetensors` mode 0600 whatever the umask
(measured: under umask 022 the tokenizer and config files beside it come out 0644, the weights 0600), so the
export is brought to the mode the umask gives any file written with `open()` (0644 under the usual 022):
never looser than that.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from kubedistill.api.spec import LoraExport, LoraSpec
from kubedistill.runtime.student.lora import merged_weights, scaling
from kubedistill.runtime.student.module import DistillationModule, output_embeddings
from kubedistill.runtime.student.teacher_weights import TeacherWeights

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class WeightPublisher:
    def __init__(
        self,
        module: DistillationModule,
        teacher: TeacherWeights,
        lora: LoraSpec | None,
        rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self._module = module
        self._teacher = teacher
        self._lora = lora
        self._keep = rank == 0
        self._dtype = dtype
        self._device = device

    def buckets(
        self, bucket_bytes: int, teacher: bool = False, on_device: bool = False
    ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The student's whole weights by Hugging Face name, in buckets of about `bucket_bytes` (collective).

        Other ranks than 0 yield empty buckets at the same points. The tensors are on the CPU (to travel
        through Ray), or on this rank's device (`on_device`, to be broadcast from there). `teacher`: the
        weights the self-distillation teacher holds instead of the student's.
        """
        where = self._device if on_device else torch.device("cpu")
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, full in self._engine_weights(teacher):
            size += full.numel() * self._dtype.itemsize
            if self._keep:
                bucket.append((name, full.to(where, self._dtype)))
            del full
            if size >= bucket_bytes:
                yield bucket
                bucket, size = [], 0
        if size:
            yield bucket

    def _engine_weights(self, teacher: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """Whole weights by the base architecture's names (LoRA merged), one all-gather at a time."""
        gathered = (
            (name, full_tensor(self._teacher.of(name, parameter) if teacher else parameter.detach()))
            for name, parameter in self._module.student.named_parameters()
        )
        if self._lora is None:
            return gathered
        return merged_weights(gathered, scaling(self._lora))

    @torch.no_grad()
    def refresh_teacher_head(self) -> None:
        """Self-distillation: the teacher's output head is the one in its weights, so the frozen copy every
        rank uses to rebuild teacher logits must follow each teacher update (collective)."""
        student = self._module.student
        head = output_embeddings(student).weight
        name = next(n for n, p in student.named_parameters() if p is head)
        teacher_head = self._module.teacher_head
        assert teacher_head is not None, "self-distillation rebuilds teacher logits with the teacher's head"
        teacher_head.copy_(full_tensor(self._teacher.of(name, head)).to(teacher_head.dtype))

    def export(
        self, directory: str, tokenizer: "PreTrainedTokenizerBase", image_processor: Path | None = None
    ) -> None:
        """Gather the full student on rank 0 and save it with its tokenizer (safetensors) and, for a
        vision-language student, its image processor's `preprocessor_config.json` (collective)."""
        state = get_model_state_dict(
            self._module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self._keep:
            prefix = "student."
            student_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            student = self._module.student
            if self._lora is not None and self._lora.export == LoraExport.ADAPTER:
                student.save_pretrained(directory, state_dict=student_state)
            elif self._lora is not None:
                merged = dict(merged_weights(student_state.items(), scaling(self._lora)))
                student.get_base_model().save_pretrained(directory, state_dict=merged)
            else:
                student.save_pretrained(directory, state_dict=student_state)
            tokenizer.save_pretrained(directory)
            if image_processor is not None:
                shutil.copyfile(image_processor, Path(directory) / image_processor.name)
            share_exported_files(Path(directory))
        dist.barrier()


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP2 shard (a collective), or the tensor itself."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def share_exported_files(directory: Path) -> None:
    """The files of `directory` (where `save_pretrained` writes, flat) that this user owns get the mode the
    umask normally gives; folders in it (a checkpoint directory) are left as they are."""
    mode = 0o666 & ~current_umask()
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
            path.chmod(mode)


def current_umask() -> int:
    # Linux shows it in /proc (since 4.7); setting and restoring it would race with other threads' files.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
