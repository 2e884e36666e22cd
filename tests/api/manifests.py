"""Manifests for the API tests: a valid base and the bad variants, each with the field its error must name."""

import copy
from dataclasses import dataclass, field
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "kubedistill.io/v1alpha1",
    "kind": "DistillationJob",
    "metadata": {"name": "qwen3-32b-to-4b"},
    "spec": {
        "teacher": {"model": "/models/Qwen3-32B", "tensorParallel": 8, "gpusPerReplica": 8},
        "student": {"model": "/models/Qwen3-4B", "replicas": 8},
        "data": {"train": {"path": "/data/train.jsonl"}},
        "training": {"globalBatchSize": 128},
    },
}

ON_POLICY_ROLLOUT = {"engines": 2, "batchSize": 32, "maxNewTokens": 1024}
MIXTURE = [{"path": "/data/a.jsonl", "weight": 0.7}, {"path": "/data/b.jsonl", "weight": 0.3}]
ENDPOINT = {"baseUrl": "https://api.example.com/v1", "model": "big-model", "apiKey": {"env": "API_KEY"}}

DELETE = object()

TEACHERS = [
    {"model": "/models/Qwen3-32B", "tensorParallel": 8, "gpusPerReplica": 8, "weight": 3},
    {"model": "/models/QwQ-32B", "tensorParallel": 4, "gpusPerReplica": 4},
]
"""spec.teachers in place of BASE's spec.teacher: two teachers of one vocabulary, 3/4 and 1/4 of the mix."""
SEVERAL_TEACHERS = {"spec.teacher": DELETE, "spec.teachers": TEACHERS}

REINFORCEMENT_ROLLOUT = {**ON_POLICY_ROLLOUT, "batchSize": 32, "samplesPerPrompt": 4}
REINFORCEMENT = {"spec.mode": "reinforcement", "spec.rollout": REINFORCEMENT_ROLLOUT}
"""Mode reinforcement on BASE: 32 prompts answered 4 times each fill one global batch of 128."""

PREFERENCE_ROLLOUT = {**ON_POLICY_ROLLOUT, "maxNewTokens": 512}
PREFERENCE = {
    "spec.mode": "preference",
    "spec.generation": {"maxNewTokens": 512},
    "spec.rollout": PREFERENCE_ROLLOUT,
}
"""Mode preference on BASE: the teacher writes the chosen answers, the student (rollout) the rejected ones."""
PREFERENCE_PAIRS = {"spec.mode": "preference", "spec.teacher": DELETE}
"""Mode preference on data that already holds pairs: no generation, no teacher."""


@dataclass(frozen=True)
class Bad:
    id: str
    changes: dict[str, Any]
    """Dotted path -> new value (DELETE removes the key)."""
    field: str
    """Field path the error message must name."""
    crd: str | None = "schema"
    """What rejects it at `kubectl apply`: schema, cel, unknown-field (strict field validation), or None
    where only the operator or runtime can (plugin names live in the runtime image)."""
    base: dict[str, Any] = field(default_factory=lambda: BASE)


def apply_changes(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return manifest


BAD_MANIFESTS: list[Bad] = [
    Bad("unknown-spec-field", {"spec.teachr": {"model": "x"}}, "spec.teachr", "unknown-field"),
    Bad("typo-in-teacher", {"spec.teacher.tensorParalel": 8}, "spec.teacher.tensorParalel", "unknown-field"),
    Bad("unknown-mode", {"spec.mode": "onpolicy"}, "spec.mode"),
    Bad("missing-student", {"spec.student": DELETE}, "spec.student"),
    Bad("missing-data", {"spec.data": DELETE}, "spec.data"),
    Bad("missing-train-path", {"spec.data.train": {"inputKey": "messages"}}, "spec.data.train.path"),
    Bad("missing-student-model", {"spec.student": {"replicas": 8}}, "spec.student.model"),
    Bad("on-policy-without-rollout", {"spec.mode": "onPolicy"}, "spec.rollout", "cel"),
    Bad("off-policy-with-rollout", {"spec.rollout": ON_POLICY_ROLLOUT}, "spec.rollout", "cel"),
    Bad(
        "sft-with-rollout",
        {"spec.mode": "sft", "spec.teacher": DELETE, "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128}},
        "spec.rollout",
        "cel",
    ),
    Bad(
        "on-policy-self-distillation-from-the-student-itself",
        {
            "spec.mode": "selfDistillation",
            "spec.teacher.model": DELETE,
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128},
        },
        "spec.rollout",
        "cel",
    ),
    Bad("sft-with-teacher", {"spec.mode": "sft"}, "spec.teacher", "cel"),
    Bad("off-policy-without-teacher", {"spec.teacher": DELETE}, "spec.teacher.model", "cel"),
    Bad("off-policy-teacher-without-model", {"spec.teacher.model": DELETE}, "spec.teacher.model", "cel"),
    Bad(
        "self-distillation-other-teacher",
        {"spec.mode": "selfDistillation", "spec.distillation": {"teacherEmaDecay": 0.99}},
        "spec.teacher.model",
        "cel",
    ),
    Bad(
        "self-distillation-sglang-teacher-with-data-parallel",
        {
            "spec.mode": "selfDistillation",
            "spec.teacher": {"backend": "sglang", "tensorParallel": 4, "gpusPerReplica": 8},
        },
        "spec.teacher.gpusPerReplica",
        "cel",
    ),
    Bad(
        "tp-pp-not-dividing-gpus", {"spec.teacher.pipelineParallel": 3}, "spec.teacher.gpusPerReplica", "cel"
    ),
    Bad(
        "nodes-not-dividing-gpus", {"spec.teacher.nodesPerReplica": 3}, "spec.teacher.nodesPerReplica", "cel"
    ),
    Bad("ep-not-dividing-tp", {"spec.teacher.expertParallel": 3}, "spec.teacher.expertParallel", "cel"),
    Bad(
        "sglang-pipeline-parallel",
        {"spec.teacher.pipelineParallel": 2, "spec.teacher.tensorParallel": 4},
        "spec.teacher.pipelineParallel",
        "cel",
    ),
    Bad("transformers-with-tp", {"spec.teacher.backend": "transformers"}, "spec.teacher.backend", "cel"),
    Bad(
        "transformers-over-two-nodes",
        {
            "spec.teacher": {
                "model": "t",
                "backend": "transformers",
                "gpusPerReplica": 2,
                "nodesPerReplica": 2,
            }
        },
        "spec.teacher.backend",
        "cel",
    ),
    Bad(
        "transformers-with-fp8",
        {"spec.teacher": {"model": "t", "backend": "transformers", "quantization": "fp8"}},
        "spec.teacher.quantization",
        "cel",
    ),
    Bad("unknown-quantization", {"spec.teacher.quantization": "int4"}, "spec.teacher.quantization"),
    Bad(
        "teacher-pod-larger-than-node",
        {"spec.teacher.gpusPerReplica": 16, "spec.teacher.tensorParallel": 16},
        "spec.teacher.gpusPerReplica",
        "cel",
    ),
    Bad(
        "batch-not-multiple-of-ranks",
        {"spec.training.globalBatchSize": 100},
        "spec.training.globalBatchSize",
        "cel",
    ),
    Bad(
        "batch-not-multiple-of-micro-batches",
        {"spec.training.globalBatchSize": 24, "spec.training.microBatchSize": 2},
        "spec.training.globalBatchSize",
        "cel",
    ),
    Bad(
        "dynamic-batch-not-multiple-of-ranks",
        {"spec.training.globalBatchSize": 12, "spec.training.maxTokensPerDevice": 8192},
        "spec.training.globalBatchSize",
        "cel",
    ),
    Bad("packing-not-a-boolean", {"spec.training.packing": "sometimes"}, "spec.training.packing"),
    Bad(
        "eval-every-without-eval", {"spec.training.evalEverySteps": 10}, "spec.training.evalEverySteps", "cel"
    ),
    Bad(
        "rollout-not-filling-steps",
        {"spec.mode": "onPolicy", "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 48}},
        "spec.rollout.batchSize",
        "cel",
    ),
    Bad(
        "rollout-longer-than-max-length",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "maxNewTokens": 4096},
        },
        "spec.rollout.maxNewTokens",
        "cel",
    ),
    Bad(
        "rollout-engine-larger-than-node",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "tensorParallel": 16},
        },
        "spec.rollout.tensorParallel",
        "cel",
    ),
    Bad(
        "lmbda-above-one",
        {"spec.mode": "onPolicy", "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "lmbda": 1.5}},
        "spec.rollout.lmbda",
    ),
    Bad(
        "lmbda-zero",
        {"spec.mode": "onPolicy", "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "lmbda": 0}},
        "spec.rollout.lmbda",
    ),
    Bad(
        "mixed-policies-with-a-round-of-several-steps",
        {"spec.mode": "onPolicy", "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 256, "lmbda": 0.5}},
        "spec.rollout.lmbda",
        "cel",
    ),
    Bad(
        "mixed-policies-on-prompts-alone",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "lmbda": 0.5},
            "spec.data.train.promptKey": "prompt",
        },
        "spec.rollout.lmbda",
        "cel",
    ),
    Bad(
        "sequence-kd-without-off-policy-steps",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "sequenceKd": True},
        },
        "spec.rollout.sequenceKd",
        "cel",
    ),
    Bad(
        "sequence-kd-with-several-teachers",
        {
            **SEVERAL_TEACHERS,
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "lmbda": 0.5, "sequenceKd": True},
        },
        "spec.rollout.sequenceKd",
        "cel",
    ),
    Bad("reinforcement-without-rollout", {"spec.mode": "reinforcement"}, "spec.rollout", "cel"),
    Bad(
        "reinforcement-without-teacher",
        {**REINFORCEMENT, "spec.teacher": {"tensorParallel": 8, "gpusPerReplica": 8}},
        "spec.teacher.model",
        "cel",
    ),
    Bad("reinforcement-with-several-teachers", {**REINFORCEMENT, **SEVERAL_TEACHERS}, "spec.teachers", "cel"),
    *(
        Bad(
            f"reinforcement-{name}",
            {**REINFORCEMENT, "spec.rollout": {**REINFORCEMENT_ROLLOUT, **change}},
            field,
            "cel",
        )
        for name, change, field in [
            (
                "one-answer-per-prompt",
                {"batchSize": 128, "samplesPerPrompt": 1},
                "spec.rollout.samplesPerPrompt",
            ),
            ("two-steps-per-round", {"batchSize": 64}, "spec.rollout.batchSize"),
            ("mixing-policies", {"lmbda": 0.5}, "spec.rollout.lmbda"),
            ("sequence-kd", {"sequenceKd": True}, "spec.rollout.sequenceKd"),
            ("tempered-sampling", {"temperature": 0.7}, "spec.rollout.temperature"),
            ("nucleus-sampling", {"topP": 0.9}, "spec.rollout.topP"),
        ]
    ),
    Bad(
        "reinforcement-with-an-algorithm",
        {**REINFORCEMENT, "spec.distillation": {"algorithm": "sparseKd"}},
        "spec.distillation.algorithm",
        "cel",
    ),
    Bad(
        "reinforcement-with-context-parallelism",
        {**REINFORCEMENT, "spec.student.contextParallel": 2, "spec.student.fsdpShardSize": -1},
        "spec.student.contextParallel",
        "cel",
    ),
    Bad(
        "reinforcement-settings-in-another-mode",
        {"spec.reinforcement": {"klCoef": 0.1}},
        "spec.reinforcement",
        "cel",
    ),
    Bad("preference-without-rollout", {**PREFERENCE, "spec.rollout": DELETE}, "spec.rollout", "cel"),
    Bad(
        "preference-pairs-with-rollout",
        {**PREFERENCE_PAIRS, "spec.rollout": PREFERENCE_ROLLOUT},
        "spec.rollout",
        "cel",
    ),
    Bad("preference-pairs-with-teacher", {"spec.mode": "preference"}, "spec.teacher", "cel"),
    Bad("preference-settings-in-another-mode", {"spec.preference": {"beta": 0.5}}, "spec.preference", "cel"),
    Bad("preference-beta-zero", {**PREFERENCE, "spec.preference": {"beta": 0}}, "spec.preference.beta"),
    *(
        Bad(f"preference-{name}", {**PREFERENCE, **changes}, field, "cel")
        for name, changes, field in [
            (
                "unpaired-answers",
                {"spec.rollout": {**PREFERENCE_ROLLOUT, "samplesPerPrompt": 2}},
                "spec.rollout.samplesPerPrompt",
            ),
            ("mixing-policies", {"spec.rollout": {**PREFERENCE_ROLLOUT, "lmbda": 0.5}}, "spec.rollout.lmbda"),
            (
                "sequence-kd",
                {"spec.rollout": {**PREFERENCE_ROLLOUT, "lmbda": 0.5, "sequenceKd": True}},
                "spec.rollout.sequenceKd",
            ),
            ("odd-global-batch", {"spec.training.globalBatchSize": 127}, "spec.training.globalBatchSize"),
            ("mixture", {"spec.data.train": DELETE, "spec.data.mixture": MIXTURE}, "spec.data.mixture"),
            (
                "teacher-input",
                {"spec.data.train": {"path": "/d.jsonl", "teacherInputKey": "hint"}},
                "spec.data.train.teacherInputKey",
            ),
            (
                "eval-prompt-records",
                {"spec.data.eval": {"path": "/e.jsonl", "promptKey": "q", "responseKey": "a"}},
                "spec.data.eval.promptKey",
            ),
            (
                "with-an-algorithm",
                {"spec.distillation": {"algorithm": "dskd"}},
                "spec.distillation.algorithm",
            ),
            (
                "endpoint-log-probabilities",
                {"spec.teacher": DELETE, "spec.generation": {"endpoint": ENDPOINT, "topLogprobs": 5}},
                "spec.generation.topLogprobs",
            ),
            (
                "scored-answers",
                {
                    "spec.teacher": DELETE,
                    "spec.generation": {"endpoint": ENDPOINT, "topLogprobs": 5, "scoreAnswers": True},
                },
                "spec.generation.scoreAnswers",
            ),
            (
                "with-context-parallelism",
                {"spec.student.contextParallel": 2, "spec.student.fsdpShardSize": -1},
                "spec.student.contextParallel",
            ),
        ]
    ),
    Bad(
        "preference-pairs-prompt-records",
        {**PREFERENCE_PAIRS, "spec.data.train": {"path": "/d.jsonl", "promptKey": "q", "responseKey": "a"}},
        "spec.data.train.promptKey",
        "cel",
    ),
    Bad("prompt-longer-than-max", {"spec.data.promptMaxLength": 4096}, "spec.data.promptMaxLength", "cel"),
    Bad(
        "prompt-key-alone",
        {"spec.data.train": {"path": "/d.jsonl", "promptKey": "q"}},
        "spec.data.train.promptKey",
        "cel",
    ),
    Bad(
        "eval-response-key-alone",
        {"spec.data.eval": {"path": "/e.jsonl", "responseKey": "a"}},
        "spec.data.eval.promptKey",
        "cel",
    ),
    Bad(
        "teacher-input-key-in-sft",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.data.train": {"path": "/d", "teacherInputKey": "c"},
        },
        "spec.data.train.teacherInputKey",
        "cel",
    ),
    Bad("shard-size-not-dividing", {"spec.student.fsdpShardSize": 3}, "spec.student.fsdpShardSize", "cel"),
    Bad("shard-size-zero", {"spec.student.fsdpShardSize": 0}, "spec.student.fsdpShardSize", "cel"),
    Bad("context-parallel-zero", {"spec.student.contextParallel": 0}, "spec.student.contextParallel"),
    Bad(
        "context-parallel-not-dividing",
        {"spec.student.contextParallel": 3},
        "spec.student.contextParallel",
        "cel",
    ),
    Bad(
        "context-parallel-with-flash-attention",
        {"spec.student.contextParallel": 2, "spec.student.attention": "flash_attention_2"},
        "spec.student.contextParallel",
        "cel",
    ),
    Bad(
        "context-parallel-with-dskd",
        {"spec.student.contextParallel": 2, "spec.distillation.algorithm": "dskd"},
        "spec.student.contextParallel",
        "cel",
    ),
    Bad(
        "context-parallel-with-hsdp",
        {"spec.student.contextParallel": 2, "spec.student.fsdpShardSize": 4},
        "spec.student.contextParallel",
        "cel",
    ),
    Bad(
        "student-not-filling-nodes",
        {"spec.student.replicas": 12, "spec.training.globalBatchSize": 120},
        "spec.student.replicas",
        "cel",
    ),
    Bad(
        "dskd-topk-vocab-with-learned-projectors",
        {"spec.distillation": {"algorithm": "dskd", "topkVocab": 20000}},
        "spec.distillation.topkVocab",
        "cel",
    ),
    Bad("dskd-topk-vocab-zero", {"spec.distillation.topkVocab": 0}, "spec.distillation.topkVocab"),
    Bad(
        "dskd-unknown-projector-init",
        {"spec.distillation.dskdProjectorInit": "svd"},
        "spec.distillation.dskdProjectorInit",
    ),
    Bad(
        "ema-outside-self-distillation",
        {"spec.distillation.teacherEmaDecay": 0.999},
        "spec.distillation.teacherEmaDecay",
        "cel",
    ),
    Bad(
        "colocate-other-gpu-counts",
        {"spec.cluster.colocate": True, "spec.teacher.replicas": 2},
        "spec.cluster.colocate",
        "cel",
    ),
    Bad(
        "colocate-rollout-other-gpu-count",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128},
            "spec.cluster.colocate": True,
        },
        "spec.cluster.colocate",
        "cel",
    ),
    Bad(
        "steps-per-wake-without-colocation",
        {"spec.teacher.stepsPerWake": 4},
        "spec.teacher.stepsPerWake",
        "cel",
    ),
    Bad("zero-steps-per-wake", {"spec.teacher.stepsPerWake": 0}, "spec.teacher.stepsPerWake"),
    Bad("unknown-attention", {"spec.student.attention": "flash_attention"}, "spec.student.attention"),
    Bad(
        "flash-attention-2-with-an-sglang-teacher",
        {"spec.student.attention": "flash_attention_2", "spec.teacher.backend": "sglang"},
        "spec.student.attention",
        "cel",
    ),
    Bad(
        "eager-attention-with-sglang-rollout",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "backend": "sglang"},
            "spec.student.attention": "eager",
        },
        "spec.student.attention",
        "cel",
    ),
    Bad("zero-temperature", {"spec.distillation.temperature": 0}, "spec.distillation.temperature"),
    Bad("kd-ratio-above-one", {"spec.distillation.kdRatio": 1.5}, "spec.distillation.kdRatio"),
    Bad("negative-jsd-beta", {"spec.distillation.jsdBeta": -0.1}, "spec.distillation.jsdBeta"),
    Bad("unknown-loss", {"spec.distillation.loss": "kl"}, "spec.distillation.loss", None),
    Bad("unknown-algorithm", {"spec.distillation.algorithm": "dkd"}, "spec.distillation.algorithm", None),
    Bad("negative-lora-rank", {"spec.student.lora": {"rank": -1}}, "spec.student.lora.rank"),
    Bad("zero-learning-rate", {"spec.training.learningRate": 0}, "spec.training.learningRate"),
    Bad(
        "min-learning-rate-above-learning-rate",
        {"spec.training.learningRate": 1.0e-5, "spec.training.minLearningRate": 1.0e-4},
        "spec.training.minLearningRate",
        "cel",
    ),
    # The floor's default (1e-8) is above a peak set lower: the rule holds against the default too.
    Bad(
        "learning-rate-below-the-default-min-learning-rate",
        {"spec.training.learningRate": 1.0e-9},
        "spec.training.minLearningRate",
        "cel",
    ),
    Bad("zero-lr-cycles", {"spec.training.lrCycles": 0}, "spec.training.lrCycles"),
    Bad("zero-lr-decay-ratio", {"spec.training.lrDecayRatio": 0}, "spec.training.lrDecayRatio"),
    Bad(
        "wsd-warmup-and-decay-longer-than-the-run",
        {
            "spec.training.lrScheduler": "wsd",
            "spec.training.warmupRatio": 0.5,
            "spec.training.lrDecayRatio": 0.6,
        },
        "spec.training.lrDecayRatio",
        "cel",
    ),
    Bad("unknown-lr-scheduler", {"spec.training.lrScheduler": "cosine"}, "spec.training.lrScheduler"),
    Bad("zero-hrl-top-k", {"spec.distillation.hrlTopK": 0}, "spec.distillation.hrlTopK"),
    Bad("three-adam-betas", {"spec.training.adamBetas": [0.9, 0.98, 0.99]}, "spec.training.adamBetas"),
    Bad("adam-beta-of-one", {"spec.training.adamBetas": [0.9, 1.0]}, "spec.training.adamBetas[1]"),
    Bad("shm-size-not-a-quantity", {"spec.cluster.shmSize": "lots"}, "spec.cluster.shmSize"),
    Bad("name-too-long", {"metadata.name": "a" * 64}, "metadata.name", "cel"),
    Bad("name-with-capitals", {"metadata.name": "Qwen3-Distill"}, "metadata.name", "cel"),
    Bad("name-with-dot", {"metadata.name": "qwen3.distill"}, "metadata.name", "cel"),
    Bad("wrong-api-version", {"apiVersion": "kubedistill.io/v1"}, "apiVersion", None),
    Bad("wrong-kind", {"kind": "DistillJob"}, "kind", None),
    Bad("zero-student-replicas", {"spec.student.replicas": 0}, "spec.student.replicas"),
    Bad("mem-fraction-of-one", {"spec.teacher.memFractionStatic": 1.0}, "spec.teacher.memFractionStatic"),
    Bad("negative-backoff", {"spec.backoffLimit": -1}, "spec.backoffLimit"),
    Bad("tolerations-not-a-list", {"spec.cluster.tolerations": {"key": "gpu"}}, "spec.cluster.tolerations"),
    Bad(
        "node-selector-value-not-text",
        {"spec.cluster.nodeSelector": {"pool": 3}},
        "spec.cluster.nodeSelector.pool",
    ),
    Bad("unknown-on-bad-record", {"spec.data.onBadRecord": "ignore"}, "spec.data.onBadRecord"),
    Bad("zero-max-steps", {"spec.training.maxSteps": 0}, "spec.training.maxSteps"),
    Bad("keep-no-checkpoints", {"spec.checkpoint.keep": 0}, "spec.checkpoint.keep"),
    Bad(
        "zero-top-p",
        {"spec.mode": "onPolicy", "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128, "topP": 0}},
        "spec.rollout.topP",
    ),
    Bad("unknown-data-format", {"spec.data.train.format": "csv"}, "spec.data.train.format"),
    Bad("hub-without-split", {"spec.data.train.format": "hub"}, "spec.data.train.split", "cel"),
    Bad("zero-max-samples", {"spec.data.train.maxSamples": 0}, "spec.data.train.maxSamples"),
    Bad("train-and-mixture", {"spec.data.mixture": MIXTURE}, "spec.data.train", "cel"),
    Bad("neither-train-nor-mixture", {"spec.data.train": DELETE}, "spec.data.train", "cel"),
    Bad(
        "mixture-of-one-source",
        {"spec.data.train": DELETE, "spec.data.mixture": MIXTURE[:1]},
        "spec.data.mixture",
    ),
    Bad(
        "mixture-source-without-weight",
        {"spec.data.train": DELETE, "spec.data.mixture": [MIXTURE[0], {"path": "/data/b.jsonl"}]},
        "spec.data.mixture[1].weight",
    ),
    Bad(
        "mixture-source-of-weight-zero",
        {"spec.data.train": DELETE, "spec.data.mixture": [MIXTURE[0], {**MIXTURE[1], "weight": 0}]},
        "spec.data.mixture[1].weight",
    ),
    Bad(
        "mixture-source-of-zero-max-samples",
        {"spec.data.train": DELETE, "spec.data.mixture": [MIXTURE[0], {**MIXTURE[1], "maxSamples": 0}]},
        "spec.data.mixture[1].maxSamples",
    ),
    Bad(
        "mixture-source-with-prompt-key-alone",
        {"spec.data.train": DELETE, "spec.data.mixture": [MIXTURE[0], {**MIXTURE[1], "promptKey": "q"}]},
        "spec.data.mixture",
        "cel",
    ),
    Bad(
        "mixture-source-on-the-hub-without-split",
        {"spec.data.train": DELETE, "spec.data.mixture": [MIXTURE[0], {**MIXTURE[1], "format": "hub"}]},
        "spec.data.mixture",
        "cel",
    ),
    Bad(
        "mixture-source-with-teacher-input-in-sft",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.data.train": DELETE,
            "spec.data.mixture": [MIXTURE[0], {**MIXTURE[1], "teacherInputKey": "context"}],
        },
        "spec.data.mixture",
        "cel",
    ),
    Bad(
        "mixture-with-generation",
        {"spec.mode": "sft", "spec.data.train": DELETE, "spec.data.mixture": MIXTURE, "spec.generation": {}},
        "spec.data.mixture",
        "cel",
    ),
    Bad(
        "mixture-in-on-policy-self-distillation-with-a-source-the-teacher-sees-as-the-student",
        {
            "spec.mode": "selfDistillation",
            "spec.teacher.model": DELETE,
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128},
            "spec.data.train": DELETE,
            "spec.data.mixture": [{**MIXTURE[0], "teacherInputKey": "hint"}, MIXTURE[1]],
        },
        "spec.rollout",
        "cel",
    ),
    Bad("unknown-precision", {"spec.training.precision": "fp16"}, "spec.training.precision"),
    Bad("replicas-as-text", {"spec.student.replicas": "eight"}, "spec.student.replicas"),
    Bad("empty-model-path", {"spec.student.model": ""}, "spec.student.model"),
    Bad(
        "off-policy-from-an-endpoint",
        {"spec.generation": {"endpoint": ENDPOINT}},
        "spec.generation.endpoint",
        "cel",
    ),
    Bad(
        "generation-on-policy",
        {
            "spec.mode": "onPolicy",
            "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128},
            "spec.generation": {},
        },
        "spec.generation",
        "cel",
    ),
    Bad(
        "sft-generation-without-teacher",
        {"spec.mode": "sft", "spec.teacher": DELETE, "spec.generation": {}},
        "spec.teacher.model",
        "cel",
    ),
    Bad(
        "sft-from-an-endpoint-with-a-teacher",
        {"spec.mode": "sft", "spec.generation": {"endpoint": ENDPOINT}},
        "spec.teacher",
        "cel",
    ),
    Bad(
        "generation-longer-than-max-length",
        {"spec.generation": {"maxNewTokens": 4096}},
        "spec.generation.maxNewTokens",
        "cel",
    ),
    Bad(
        "top-logprobs-from-the-own-teacher",
        {"spec.generation": {"topLogprobs": 5}},
        "spec.generation.topLogprobs",
        "cel",
    ),
    Bad(
        "top-logprobs-beyond-openais-20",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": ENDPOINT, "topLogprobs": 21},
        },
        "spec.generation.topLogprobs",
    ),
    Bad(
        "score-answers-without-top-logprobs",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": ENDPOINT, "scoreAnswers": True},
        },
        "spec.generation.scoreAnswers",
        "cel",
    ),
    Bad(
        "score-answers-with-several-samples",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {
                "endpoint": ENDPOINT,
                "topLogprobs": 5,
                "scoreAnswers": True,
                "samplesPerPrompt": 2,
            },
        },
        "spec.generation.scoreAnswers",
        "cel",
    ),
    Bad(
        "sparse-kd-without-the-endpoints-top-logprobs",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": ENDPOINT},
            "spec.distillation.algorithm": "sparseKd",
        },
        "spec.distillation.algorithm",
        "cel",
    ),
    Bad(
        "sparse-kd-beside-the-jobs-own-teacher",
        {"spec.distillation.algorithm": "sparseKd"},
        "spec.distillation.algorithm",
        "cel",
    ),
    Bad(
        "sparse-kd-with-a-temperature",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": ENDPOINT, "topLogprobs": 5},
            "spec.distillation.algorithm": "sparseKd",
            "spec.distillation.temperature": 2.0,
        },
        "spec.distillation.temperature",
        "cel",
    ),
    Bad(
        "loss-add-tail-without-sparse-kd",
        {"spec.distillation.lossAddTail": False},
        "spec.distillation.lossAddTail",
        "cel",
    ),
    Bad(
        "endpoint-url-without-v1",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": {**ENDPOINT, "baseUrl": "https://api.example.com"}},
        },
        "spec.generation.endpoint.baseUrl",
    ),
    Bad(
        "api-key-env-not-a-name",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": {**ENDPOINT, "apiKey": {"env": "sk-abc123"}}},
        },
        "spec.generation.endpoint.apiKey.env",
    ),
    Bad(
        "min-kept-fraction-above-one",
        {"spec.mode": "sft", "spec.generation": {"minKeptFraction": 1.5}},
        "spec.generation.minKeptFraction",
    ),
    Bad(
        "endpoint-timeout-zero",
        {
            "spec.mode": "sft",
            "spec.teacher": DELETE,
            "spec.generation": {"endpoint": {**ENDPOINT, "timeoutSeconds": 0}},
        },
        "spec.generation.endpoint.timeoutSeconds",
    ),
    Bad(
        "step-template-with-an-unknown-placeholder",
        {"spec.generation": {"steps": [{"kind": "judge", "threshold": 5, "template": "{answer} {score}"}]}},
        "spec.generation.steps[0].template",
    ),
    Bad(
        "judge-threshold-outside-the-score-range",
        {"spec.generation": {"steps": [{"kind": "judge", "threshold": 10}]}},
        "spec.generation.steps[0].threshold",
    ),
    Bad(
        "judge-without-threshold",
        {"spec.generation": {"steps": [{"kind": "judge"}]}},
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "judge-template-without-the-answer",
        {"spec.generation": {"steps": [{"kind": "judge", "threshold": 5, "template": "Rate {instruction}"}]}},
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "expansion-template-with-an-answer",
        {"spec.generation": {"steps": [{"kind": "instructionExpansion", "template": "{examples} {answer}"}]}},
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "step-with-template-and-template-file",
        {
            "spec.generation": {
                "steps": [{"kind": "chainOfThought", "template": "{instruction}", "templateFile": "/t.txt"}]
            }
        },
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "two-chain-of-thought-steps",
        {"spec.generation": {"steps": [{"kind": "chainOfThought"}, {"kind": "chainOfThought"}]}},
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "judge-reading-logprobs-of-the-own-teacher",
        {"spec.generation": {"steps": [{"kind": "judge", "threshold": 5, "scoreFrom": "logprobs"}]}},
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "steps-with-score-answers",
        {
            "spec.mode": "sft",
            "spec.generation": {
                "endpoint": ENDPOINT,
                "topLogprobs": 5,
                "scoreAnswers": True,
                "steps": [{"kind": "instructionRefinement"}],
            },
        },
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "answer-rewrite-with-top-logprobs",
        {
            "spec.mode": "sft",
            "spec.generation": {"endpoint": ENDPOINT, "topLogprobs": 5, "steps": [{"kind": "longToShort"}]},
        },
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "instruction-step-with-a-teacher-input",
        {
            "spec.data.train.teacherInputKey": "context",
            "spec.generation": {"steps": [{"kind": "instructionExpansion"}]},
        },
        "spec.generation.steps",
        "cel",
    ),
    Bad(
        "generation-with-plain-text",
        {"spec.generation": {}, "spec.data.applyChatTemplate": False},
        "spec.data.applyChatTemplate",
        "cel",
    ),
    Bad(
        "chat-template-with-plain-text",
        {"spec.data.chatTemplate": "/templates/qwen3.jinja", "spec.data.applyChatTemplate": False},
        "spec.data.chatTemplate",
        "cel",
    ),
    Bad(
        "chat-template-kwargs-with-plain-text",
        {"spec.data.chatTemplateKwargs": {"enable_thinking": False}, "spec.data.applyChatTemplate": False},
        "spec.data.chatTemplateKwargs",
        "cel",
    ),
    Bad(
        "chat-template-kwargs-setting-the-generation-prompt",
        {"spec.data.chatTemplateKwargs": {"add_generation_prompt": True}},
        "spec.data.chatTemplateKwargs",
        "cel",
    ),
    Bad("chat-template-empty", {"spec.data.chatTemplate": ""}, "spec.data.chatTemplate"),
    Bad("train-turns-unknown", {"spec.data.trainTurns": "first"}, "spec.data.trainTurns"),
    Bad(
        "mlflow-tracking-uri-without-scheme",
        {"spec.tracking": {"mlflow": {"trackingUri": "mlflow.mlops:5000"}}},
        "spec.tracking.mlflow.trackingUri",
    ),
    Bad(
        "wandb-without-project",
        {"spec.tracking": {"wandb": {"mode": "offline"}}},
        "spec.tracking.wandb.project",
    ),
    Bad(
        "tracker-secret-without-key",
        {
            "spec.tracking": {
                "wandb": {"project": "p", "credentials": {"env": "KEY", "secretKeyRef": {"name": "w"}}}
            }
        },
        "spec.tracking.wandb.credentials.secretKeyRef.key",
    ),
    Bad("tracker-unknown", {"spec.tracking": {"comet": {}}}, "spec.tracking.comet", "unknown-field"),
    Bad("teacher-and-teachers", {"spec.teachers": TEACHERS}, "spec.teachers", "cel"),
    Bad("teachers-of-one", {**SEVERAL_TEACHERS, "spec.teachers": TEACHERS[:1]}, "spec.teachers"),
    Bad(
        "teachers-without-a-model",
        {**SEVERAL_TEACHERS, "spec.teachers": [TEACHERS[0], {"weight": 1}]},
        "spec.teachers[1].model",
    ),
    Bad(
        "teachers-of-weight-zero",
        {**SEVERAL_TEACHERS, "spec.teachers": [TEACHERS[0], {**TEACHERS[1], "weight": 0}]},
        "spec.teachers[1].weight",
    ),
    Bad(
        "teachers-in-self-distillation",
        {**SEVERAL_TEACHERS, "spec.mode": "selfDistillation"},
        "spec.teachers",
        "cel",
    ),
    Bad(
        "teachers-with-a-cross-tokenizer-algorithm",
        {**SEVERAL_TEACHERS, "spec.distillation": {"algorithm": "dskd"}},
        "spec.teachers",
        "cel",
    ),
    Bad(
        "teachers-colocated-one-on-fewer-gpus",
        {**SEVERAL_TEACHERS, "spec.cluster": {"colocate": True}},
        "spec.cluster.colocate",
        "cel",
    ),
    Bad(
        "teachers-generating",
        {**SEVERAL_TEACHERS, "spec.generation": {"maxNewTokens": 256}},
        "spec.teachers",
        "cel",
    ),
    Bad(
        "teachers-one-of-a-layout-that-does-not-divide",
        {**SEVERAL_TEACHERS, "spec.teachers": [TEACHERS[0], {**TEACHERS[1], "gpusPerReplica": 6}]},
        "spec.teachers",
        "cel",
    ),
]
