"""The teacher on transformers: CPU or one GPU per replica. The SGLang backend serves the same protocol."""

from collections.abc import Iterable

import torch

from kubedistill.runtime.models import copy_named_tensors, load_causal_lm
from kubedistill.runtime.padding import pad_right
from kubedistill.runtime.teacher.backend import TeacherBatch


class TransformersTeacher:
    def __init__(self, model_path: str, dtype: torch.dtype, device: torch.device) -> None:
        self._device = device
        self._model = load_causal_lm(model_path, dtype).to(device).eval()
        self._model.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self._model.config.hidden_size)

    @torch.inference_mode()
    def hidden_states(self, batch: TeacherBatch) -> torch.Tensor:
        input_ids, attention_mask = pad_right(batch.sequences, pad_id=0)
        # The backbone's last output is after the final norm: exactly the input of lm_head, so the student
        # recomputes the teacher's logits bit for bit (checked in tests: lm_head(h) == logits).
        outputs = self._model.model(
            input_ids=input_ids.to(self._device), attention_mask=attention_mask.to(self._device)
        )
        hidden = outputs.last_hidden_state
        rows = torch.tensor(
            [r for r, positions in enumerate(batch.positions) for _ in positions], dtype=torch.long
        )
        columns = torch.tensor([p for positions in batch.positions for p in positions], dtype=torch.long)
        return hidden[rows.to(self._device), columns.to(self._device)].to("cpu")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        copy_named_tensors(self._model, named_tensors)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The teacher's current weights, to check a weight sync."""
        return {name: value.detach().to("cpu").clone() for name, value in self._model.named_parameters()}

    def sleep(self) -> None:
        """Nothing to release: transformers keeps no KV cache between calls."""

    def wake(self) -> None:
        """Nothing to take back (see `sleep`)."""

    def close(self) -> None:
        del self._model
