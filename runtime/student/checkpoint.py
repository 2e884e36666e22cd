"""A student rank's part of a checkpoint: its DCP shards of the model, the optimizer, the self-distillation
teacher's weights and the frozen reference's (DPO, GRPO), and its own schedule and RNG state (`rank-N.pt`).

The driver's side (atomic commits, retention, `trainer.json`) is `kubedistill.runtime.trainer.checkpoints`.
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from kubedistill.runtime.student.module import DistillationModule
from kubedistill.runtime.student.optimizer import StudentOptimizer
from kubedistill.runtime.student.reference import ReferenceWeights
from kubedistill.runtime.student.teacher_weights import TeacherWeights


class RankCheckpointer:
    def __init__(
        self,
        module: DistillationModule,
        optimizer: StudentOptimizer,
        teacher: TeacherWeights,
        reference: ReferenceWeights,
        rank: int,
    ) -> None:
        self._module = module
        self._optimizer = optimizer
        self._teacher = teacher
        self._reference = reference
        self._rank = rank

    def save(self, directory: str) -> None:
        """Write this rank's shards and its schedule and RNG state into `directory` (collective)."""
        model_state, optimizer_state = get_state_dict(self._module, self._optimizer.optimizer)
        dcp_save(
            {
                "model": model_state,
                "optimizer": optimizer_state,
                "teacher": self._teacher.tensors,
                "reference": self._reference.tensors,
            },
            checkpoint_id=directory,
        )
        torch.save(
            {"scheduler": self._optimizer.scheduler.state_dict(), "rng": _rng_state()},
            Path(directory) / f"rank-{self._rank}.pt",
        )
        dist.barrier()

    def load(self, directory: str) -> None:
        model_state, optimizer_state = get_state_dict(self._module, self._optimizer.optimizer)
        state = {
            "model": model_state,
            "optimizer": optimizer_state,
            "teacher": self._teacher.tensors,
            "reference": self._reference.tensors,
        }
        dcp_load(state, checkpoint_id=directory)
        set_state_dict(
            self._module,
            self._optimizer.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        extra = torch.load(Path(directory) / f"rank-{self._rank}.pt", weights_only=False)
        self._optimizer.scheduler.load_state_dict(extra["scheduler"])
        _set_rng_state(extra["rng"])
        dist.barrier()

    def load_weights(self, directory: str) -> None:
        """The model's shards alone (the student's and any projector's): a job started from another job's
        checkpoint keeps its own optimizer, schedule and RNG, laid out for its own data from step 0."""
        state = {"model": get_model_state_dict(self._module)}
        dcp_load(state, checkpoint_id=directory)
        set_model_state_dict(self._module, state["model"])
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
