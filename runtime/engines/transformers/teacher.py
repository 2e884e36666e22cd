"""The teacher on transformers: CPU or one GPU per replica. The SGLang backend serves the same protocol."""

import torch

from kubedistill.runtime.data.batching import pad_right
from kubedistill.runtime.data.images import batch_image_inputs
from kubedistill.runtime.engines.transformers.rollout import TransformersRollout
from kubedistill.runtime.models.vision import backbone, language_config
from kubedistill.runtime.teacher.backend import TeacherBatch


class TransformersTeacher(TransformersRollout):
    """Hidden states of given sequences; and, for sequence-level KD (spec.rollout.sequenceKd), answers to
    prompts sampled during training, as a rollout engine samples them."""

    @property
    def hidden_size(self) -> int:
        return int(language_config(self._model.config).hidden_size)

    @torch.inference_mode()
    def hidden_states(self, batch: TeacherBatch) -> torch.Tensor:
        self._check_awake()
        input_ids, attention_mask = pad_right(batch.sequences, pad_id=0)
        images = batch_image_inputs(batch.images, input_ids)
        # The backbone's last output is after the final norm: exactly the input of lm_head, so the student
        # recomputes the teacher's logits bit for bit (checked in tests: lm_head(h) == logits).
        outputs = backbone(self._model)(
            input_ids=input_ids.to(self._device),
            attention_mask=attention_mask.to(self._device),
            **{name: value.to(self._device) for name, value in images.items()},
        )
        hidden = outputs.last_hidden_state
        rows = torch.tensor(
            [r for r, positions in enumerate(batch.positions) for _ in positions], dtype=torch.long
        )
        columns = torch.tensor([p for positions in batch.positions for p in positions], dtype=torch.long)
        return hidden[rows.to(self._device), columns.to(self._device)].to("cpu")
