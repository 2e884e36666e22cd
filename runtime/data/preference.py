"""Preference pairs (mode preference): the records DPO trains on, and the two samples each becomes.

A pair record is TRL's explicit-prompt preference format (huggingface/trl @ f2cd577
`docs/source/dataset_formats.md:346-362`): `prompt`,
`chosen` and `rejected`, each a list of messages (conversational: the prompt's turns, then the assistant
messages of each answer) or a string (EasyDistill's own pairs, `{"prompt", "chosen", "rejected"}` strings:
modelscope/easydistill @ 934af26 `easydistill/rank/infer.py:211-225`; the prompt then is a user message and
each answer an assistant message, rendered through the chat template as EasyDistill's `rank/train.py:38-49`
renders them). The pairs file the generation phase writes (`generation.pairs`) has the conversational form.

A record may give its pair's own DPO beta (`beta`, a positive number): CogPO's data (EasyDistill's
DistilQwen2.5-R1 recipe, modelscope/easydistill @ 934af26 `recipes/distilqwen_series/distillqwen2.5-r1/
cogpo.py:29-37` reads `beta` from each example); without one the pair trains at spec.preference.beta.

Each pair becomes two samples, chosen then rejected, with the pair's index as their `Sample.group`
(`paired`): batching keeps them together, and DPO reads the first as the chosen one.
"""

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.data.errors import RecordProblem
from kubedistill.runtime.data.messages import chat_messages
from kubedistill.runtime.data.records import json_type
from kubedistill.runtime.data.sample import Sample

PROMPT, CHOSEN, REJECTED, BETA = "prompt", "chosen", "rejected", "beta"


def pair_messages(fields: Mapping[str, Any]) -> tuple[list[Message], list[Message], list[Message]]:
    """The prompt's messages and each answer's (assistant) messages; `RecordProblem` naming the key."""
    prompt = _messages(fields, PROMPT, "user")
    if prompt[-1]["role"] == "assistant":
        raise RecordProblem(
            f"{PROMPT!r} ends with an assistant message; the answers are {CHOSEN!r} and {REJECTED!r}"
        )
    answers = []
    for key in (CHOSEN, REJECTED):
        messages = _messages(fields, key, "assistant")
        if messages[0]["role"] != "assistant":
            raise RecordProblem(
                f"{key!r} must start with the assistant's answer, got role {messages[0]['role']!r}"
            )
        first = messages[0]
        if not first["content"].strip() and not first.get("tool_calls"):
            raise RecordProblem(f"{key!r}: the answer is empty")
        answers.append(messages)
    return prompt, answers[0], answers[1]


def pair_beta(fields: Mapping[str, Any]) -> float | None:
    """The pair's own beta (CogPO), or None where the record gives none."""
    value = fields.get(BETA)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise RecordProblem(f"{BETA!r} must be a positive number (the pair's own DPO beta), got {value!r}")
    return float(value)


def _messages(fields: Mapping[str, Any], key: str, role: str) -> list[Message]:
    if key not in fields:
        raise RecordProblem(
            f"has no {key!r}: mode preference trains on pairs ({PROMPT!r}, {CHOSEN!r}, {REJECTED!r}; TRL's "
            "preference format), or on prompts with spec.generation and spec.rollout to answer them"
        )
    value = fields[key]
    if isinstance(value, str):
        if not value.strip():
            raise RecordProblem(f"{key!r} is blank")
        return [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise RecordProblem(f"{key!r} must be a list of messages or a string, got {json_type(value)}")
    return chat_messages(value, key)


def paired(samples: list[Sample]) -> list[Sample]:
    """The samples of pair records (two each, chosen then rejected, in record order) with each pair's index
    as their group."""
    if len(samples) % 2:
        raise ValueError(f"{len(samples)} samples cannot be pairs")
    for chosen, rejected in zip(samples[0::2], samples[1::2], strict=True):
        if chosen.source != rejected.source:
            raise ValueError(f"{chosen.source} and {rejected.source} are not one pair record's samples")
    return [replace(sample, group=index // 2) for index, sample in enumerate(samples)]
