"""A KDFlow command line as a DistillationJob manifest (`kubedistill from-kdflow`).

KDFlow (songmzhang/KDFlow @ 3a7a21a) reads its arguments with transformers' HfArgumentParser into the
dataclasses of `kdflow/arguments/*.py`, and runs one of three entry points: `kdflow.cli.train_kd_off_policy`,
`train_kd_on_policy` and `train_sft`. `convert` takes such a command line (with or without the launcher in
front) and returns the manifest that trains the same way, and a note for every argument that was converted
in value, has no counterpart, or is left out. Where the two projects define a setting differently, the value
is converted so that the loss is the same:

- `--jsd_beta b`: KDFlow mixes m = b q + (1 - b) p and weighs b KL(q || m) + (1 - b) KL(p || m)
  (kdflow/loss/js_div.py:22-28), so its b is the student's weight; ours (TRL's) is the teacher's: 1 - b.
- `--adaptive_alpha a`: KDFlow's tail is the least likely tokens up to mass a, sorted ascending
  (kdflow/loss/adaptive_kl_div.py:22-28); ours is the head of the most likely tokens up to mass alpha:
  1 - a, which splits the vocabulary at the same place but for the one token straddling it.
- `--dskd_token_align` defaults to eta and `--dskd_projector_lr` to 1e-4 in KDFlow
  (kdflow/arguments/distillation_args.py:68-82); ours to cma and 1e-3, so a DSKD job states both.
- KDFlow's DSKD always starts its projectors by pseudo-inverse (kdflow/algorithms/dskd.py:97-141), over the
  first `--dskd_topk_vocab` shared tokens: a DSKD job states dskdProjectorInit pseudoInverse (ours defaults
  to learned) and topkVocab where k is not -1.
- `--kd_loss_fn hrl` ignores `--kd_temperature` and `--hrl_topk`: the loss never divides by the temperature,
  and `build_loss_fn` passes `hrl_topk` (kdflow/loss/__init__.py:36) to a function whose parameter is
  `hr_topk` (kdflow/loss/hierarchical_ranking_loss.py:13), so KDFlow always ranks the top 5.
- `--teacher_tp_size` defaults to 8 (ours 1); teacher replicas and rollout engines are what KDFlow sets
  itself (kdflow/arguments/__init__.py:84-128): all GPUs over one engine's GPUs, every role on the same GPUs.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubedistill.api.job import API_VERSION, KIND, MAX_NAME_LENGTH, InvalidJob, parse_job

ENTRY_POINT = re.compile(r"kdflow\.cli\.(train_kd_off_policy|train_kd_on_policy|train_sft)$")

KDFLOW_DEFAULTS: dict[str, str] = {
    # kdflow/arguments/training_args.py
    "num_nodes": "1",
    "num_gpus_per_node": "8",
    "num_epochs": "1",
    "train_batch_size": "128",
    "micro_train_batch_size": "1",
    "learning_rate": "1e-6",
    "lr_warmup_ratio": "0.05",
    "min_lr": "1e-8",
    "lr_scheduler": "cosine_with_min_lr",
    "max_norm": "1.0",
    "weight_decay": "0.0",
    "adam_betas": "(0.9, 0.98)",
    "eval_steps": "-1",
    "save_steps": "-1",
    "backend": "fsdp2",
    "gradient_checkpointing": "False",
    "gradient_checkpointing_use_reentrant": "False",
    "teacher_offload": "False",
    "train_enable_sleep": "False",
    "enable_sleep": "False",
    "full_determinism": "False",
    "load_checkpoint": "False",
    "ckpt_path": "./ckpt/checkpoints_distill",
    "save_path": "./ckpt/",
    "seed": "42",
    "use_dynamic_bsz": "False",
    "max_token_len_per_gpu": "0",
    "bf16": "False",
    "local_rank": "-1",
    # kdflow/arguments/model_args.py
    "student_name_or_path": "",
    "teacher_name_or_path": "",
    "attn_implementation": "flash_attention_2",
    "use_liger_kernel": "False",
    "lora_rank": "0",
    "lora_alpha": "16",
    "target_modules": "all-linear",
    "lora_dropout": "0.0",
    "disable_fast_tokenizer": "False",
    "enable_thinking": "False",
    "ring_attn_size": "1",
    # kdflow/arguments/data_args.py
    "train_dataset_path": "",
    "train_dataset_probs": "",
    "train_split": "train",
    "eval_dataset_path": "",
    "eval_split": "eval",
    "input_key": "messages",
    "image_key": "",
    "output_key": "",
    "teacher_input_key": "",
    "label_key": "",
    "input_template": "",
    "apply_chat_template": "True",
    "max_len": "4096",
    "max_samples": "100000000",
    "packing_samples": "False",
    "prompt_max_len": "2048",
    "preprocess_num_workers": "8",
    # kdflow/arguments/fsdp_args.py
    "fsdp_size": "-1",
    "cpu_offload": "False",
    # kdflow/arguments/distillation_args.py
    "kd_ratio": "0.5",
    "kd_temperature": "1.0",
    "kd_algorithm": "vanilla_kd",
    "kd_loss_fn": "kl",
    "teacher_forward_n_batches": "1",
    "teacher_enable_sleep": "False",
    "teacher_offload_tags": "all",
    "teacher_quantization": "",
    "teacher_tp_size": "8",
    "teacher_ep_size": "1",
    "teacher_pp_size": "1",
    "teacher_dp_size": "1",
    "teacher_mem_fraction_static": "0.4",
    "teacher_update_freq": "1",
    "dskd_token_align": "eta",
    "dskd_topk_vocab": "-1",
    "dskd_projector_lr": "1e-4",
    "jsd_beta": "0.5",
    "skew_lambda": "0.1",
    "adaptive_alpha": "0.5",
    "hrl_topk": "5",
    # kdflow/arguments/rollout_args.py
    "rollout_num_engines": "0",
    "rollout_tp_size": "1",
    "rollout_enable_sleep": "False",
    "rollout_mem_fraction_static": "0.6",
    "top_p": "1.0",
    "temperature": "1.0",
    "n_samples_per_prompt": "1",
    "rollout_batch_size": "32",
    "generate_max_len": "2048",
    "print_rollout_sample": "False",
    # kdflow/arguments/logging_args.py
    "logging_steps": "10",
    "use_wandb": "False",
    "wandb_org": "",
    "wandb_project": "",
    "wandb_group": "",
    "wandb_run_name": "",
    "wandb_mode": "online",
    "wandb_dir": "",
}
"""Every argument KDFlow knows, with its default as a command line would spell it ("" for None)."""

ROLLOUT_ARGUMENTS = frozenset(
    {
        "rollout_num_engines",
        "rollout_tp_size",
        "rollout_mem_fraction_static",
        "top_p",
        "temperature",
        "n_samples_per_prompt",
        "rollout_batch_size",
        "generate_max_len",
    }
)

NO_EFFECT_HERE: dict[str, str] = {
    "backend": "FSDP2 is the only student backend",
    "gradient_checkpointing_use_reentrant": "checkpointing is always non-reentrant",
    "teacher_offload": "a colocated teacher sleeps while the student trains",
    "train_enable_sleep": "colocated roles always take turns on the GPUs",
    "teacher_enable_sleep": "colocated roles always take turns on the GPUs",
    "rollout_enable_sleep": "colocated roles always take turns on the GPUs",
    "enable_sleep": "colocated roles always take turns on the GPUs",
    "full_determinism": "no such switch",
    "load_checkpoint": "a job always resumes from the newest checkpoint in spec.checkpoint.path",
    "local_rank": "set by the launcher",
    "disable_fast_tokenizer": "the fast tokenizer is always used",
    "preprocess_num_workers": "no such setting",
    "packing_samples": "no packing option",
    "label_key": "only read for rollout prompts' reference answers, which KubeDistill does not use",
    "teacher_offload_tags": "no such setting",
    "teacher_dp_size": "set from the GPUs, as KDFlow itself does",
    "rollout_num_engines": "set from the GPUs, as KDFlow itself does",
    "print_rollout_sample": "no such setting",
    "use_wandb": "metrics go to /metrics and metrics.jsonl",
    "wandb_org": "metrics go to /metrics and metrics.jsonl",
    "wandb_project": "metrics go to /metrics and metrics.jsonl",
    "wandb_group": "metrics go to /metrics and metrics.jsonl",
    "wandb_run_name": "metrics go to /metrics and metrics.jsonl; it names the job unless --name is given",
    "wandb_mode": "metrics go to /metrics and metrics.jsonl",
    "wandb_dir": "metrics go to /metrics and metrics.jsonl",
}
"""Arguments without a counterpart that changes nothing of what is trained, and why."""

UNSUPPORTED: dict[str, str] = {
    "image_key": "pictures are read from the chat messages' image parts (README, Pictures)",
    "output_key": "responses are read from the chat messages, or from promptKey/responseKey records",
    "input_template": "no input template; use the chat template or promptKey/responseKey",
    "enable_thinking": "no chat-template switches in the spec yet; the template renders with its default",
    "ring_attn_size": "no context parallelism",
}
"""Arguments that change training in KDFlow and have no counterpart here, and why; noted when they differ
from KDFlow's default."""

RENDERED_DIFFERENTLY = frozenset({"enable_thinking"})
"""Unsupported even at KDFlow's default: KDFlow passes enable_thinking=False to the chat template, which
renders otherwise without it (Qwen3's thinks by default)."""

LOSSES = {
    "kl": "fkl",
    "rkl": "rkl",
    "jsd": "jsd",
    "tvd": "tvd",
    "skl": "skl",
    "srkl": "srkl",
    "akl": "akl",
    "top1_ce": "top1Ce",
    "hrl": "hrl",
}
ALGORITHMS = {"vanilla_kd": "vanilla", "dskd": "dskd", "simple_ctkd": "simpleCtkd"}
SCHEDULES = {
    "cosine_with_min_lr": "cosineWithMinLr",
    "cosine_warmup_with_min_lr": "cosineWithMinLr",
    "constant_with_warmup": "constant",
    "linear": "linear",
    "cosine_with_restarts": "cosineWithRestarts",
    "warmup_stable_decay": "wsd",
}
DATA_FILE = re.compile(r"\.(jsonl?|parquet|arrow|csv)(\.gz)?$")


class NotAKDFlowCommand(ValueError):
    """An argument KDFlow does not know (its HfArgumentParser refuses it too), or a value it cannot read."""


@dataclass(frozen=True)
class Conversion:
    manifest: dict[str, Any]
    """The DistillationJob, valid (`parse_job` accepted it)."""
    notes: list[str]
    """One line per argument converted in value, dropped or unsupported: `--name value: what became of it`."""


def _bool(value: str) -> bool:
    # transformers' string_to_bool, which HfArgumentParser uses for bool fields.
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise NotAKDFlowCommand(f"{value!r} is not a truth value")


def parse_command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """(the entry point named in front, if any; the `--name value` arguments). A flag without a value is
    "True", as HfArgumentParser reads a bare bool flag."""
    arguments = list(argv)
    entry = None
    for i, token in enumerate(arguments):
        found = ENTRY_POINT.search(token)
        if found:
            entry, arguments = found.group(1), arguments[i + 1 :]
            break
    given: dict[str, str] = {}
    i = 0
    while i < len(arguments):
        token = arguments[i]
        if not token.startswith("--"):
            raise NotAKDFlowCommand(f"{token!r} is not an argument of KDFlow (they start with --)")
        name, equals, value = token[2:].partition("=")
        if name not in KDFLOW_DEFAULTS:
            raise NotAKDFlowCommand(f"--{name} is not an argument of KDFlow (kdflow/arguments/*.py)")
        if not equals:
            has_value = i + 1 < len(arguments) and not arguments[i + 1].startswith("--")
            value = arguments[i + 1] if has_value else "True"
            i += 1 if has_value else 0
        given[name] = value
        i += 1
    return entry, given


class _Builder:
    def __init__(self, given: dict[str, str]) -> None:
        self.given = given
        self.manifest: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {}, "spec": {}}
        self.notes: list[str] = []
        self.used: set[str] = set()

    def value(self, name: str) -> str:
        self.used.add(name)
        return self.given.get(name, KDFLOW_DEFAULTS[name])

    def number(self, name: str, kind: Callable[[str], Any] = float) -> Any:
        try:
            return kind(self.value(name))
        except ValueError:
            raise NotAKDFlowCommand(f"--{name} {self.value(name)}: not a number") from None

    def set(self, path: str, value: Any) -> None:
        *parents, leaf = path.split(".")
        node = self.manifest
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def carry(self, name: str, path: str, kind: Callable[[str], Any] = float) -> None:
        """spec.<path> = the argument's value, where the command line gives it."""
        if name in self.given:
            self.set(f"spec.{path}", _bool(self.value(name)) if kind is bool else self.number(name, kind))

    def note(self, name: str, what: str) -> None:
        shown = f"--{name} {self.given[name]}" if name in self.given else f"--{name} (default)"
        self.notes.append(f"{shown}: {what}")


def _mode(entry: str | None, given: dict[str, str], builder: _Builder) -> str:
    teacher = given.get("teacher_name_or_path")
    algorithm = given.get("kd_algorithm")
    if entry == "train_sft" or algorithm == "sft" or not teacher:
        return "sft"
    on_policy = entry == "train_kd_on_policy" or (entry is None and bool(ROLLOUT_ARGUMENTS & given.keys()))
    if entry is None:
        guessed = "onPolicy (rollout arguments given)" if on_policy else "offPolicy (no rollout arguments)"
        builder.notes.append(f"(no kdflow.cli entry point in front): spec.mode {guessed}")
    if not on_policy:
        return "offPolicy"
    # KDFlow's on-policy trainer refreshes the teacher from the student when both paths are equal
    # (kdflow/trainer/on_policy_kd_trainer.py:140).
    return "selfDistillation" if teacher == given.get("student_name_or_path") else "onPolicy"


def _training(b: _Builder) -> None:
    b.carry("num_epochs", "training.epochs", int)
    b.carry("train_batch_size", "training.globalBatchSize", int)
    b.carry("micro_train_batch_size", "training.microBatchSize", int)
    b.carry("learning_rate", "training.learningRate")
    b.carry("lr_warmup_ratio", "training.warmupRatio")
    b.carry("min_lr", "training.minLearningRate")
    b.carry("max_norm", "training.maxGradNorm")
    b.carry("weight_decay", "training.weightDecay")
    b.carry("seed", "training.seed", int)
    b.carry("logging_steps", "training.logEverySteps", int)
    if "adam_betas" in b.given:
        betas = [float(beta) for beta in b.value("adam_betas").strip().strip("()").split(",")]
        b.set("spec.training.adamBetas", betas)
    if "bf16" in b.given:
        b.set("spec.training.precision", "bf16" if _bool(b.value("bf16")) else "fp32")
    if _bool(b.value("use_dynamic_bsz")):
        b.set("spec.training.maxTokensPerDevice", b.number("max_token_len_per_gpu", int))
    b.used.add("max_token_len_per_gpu")
    if b.number("eval_steps", int) > 0:
        b.set("spec.training.evalEverySteps", b.number("eval_steps", int))
    if b.number("save_steps", int) > 0:
        b.set("spec.checkpoint.everySteps", b.number("save_steps", int))
    if "ckpt_path" in b.given:
        b.set("spec.checkpoint.path", b.value("ckpt_path"))
    if "save_path" in b.given:
        b.set("spec.output.path", b.value("save_path"))
    _schedule(b)


def _schedule(b: _Builder) -> None:
    if "lr_scheduler" not in b.given:
        return
    name = b.value("lr_scheduler")
    if name == "constant":
        # transformers' `constant` has no warm-up (get_scheduler calls it with the optimizer alone).
        b.set("spec.training.lrScheduler", "constant")
        b.set("spec.training.warmupRatio", 0.0)
        b.note(
            "lr_scheduler",
            "spec.training.lrScheduler constant and warmupRatio 0 (no warm-up in transformers)",
        )
    elif name in SCHEDULES:
        b.set("spec.training.lrScheduler", SCHEDULES[name])
        if name in ("linear", "cosine_with_restarts", "warmup_stable_decay"):
            b.note(
                "lr_scheduler",
                f"spec.training.lrScheduler {SCHEDULES[name]}; KDFlow itself fails to start with it: it "
                "hands min_lr to transformers' get_scheduler (kdflow/ray/train/student_actor.py:110-116), "
                "which this schedule does not take",
            )
    else:
        b.note("lr_scheduler", "unsupported: no such schedule here; the manifest keeps cosineWithMinLr")


def _models(b: _Builder, mode: str) -> None:
    nodes, per_node = b.number("num_nodes", int), b.number("num_gpus_per_node", int)
    gpus = nodes * per_node
    b.set("spec.student.model", b.value("student_name_or_path"))
    b.set("spec.student.replicas", gpus)
    b.set("spec.cluster.gpusPerNode", per_node)
    b.carry("gradient_checkpointing", "student.gradientCheckpointing", bool)
    b.carry("use_liger_kernel", "student.ligerKernel", bool)
    _attention(b, mode)
    b.carry("cpu_offload", "student.cpuOffload", bool)
    b.carry("fsdp_size", "student.fsdpShardSize", int)
    if b.number("lora_rank", int) > 0:
        b.set("spec.student.lora.rank", b.number("lora_rank", int))
        b.carry("lora_alpha", "student.lora.alpha", int)
        b.carry("lora_dropout", "student.lora.dropout")
        if "target_modules" in b.given:
            b.set("spec.student.lora.targetModules", b.value("target_modules").split(","))
    b.used.update({"lora_alpha", "lora_dropout", "target_modules"})
    if mode == "sft":
        b.used.add("teacher_name_or_path")
        return
    tensor, pipeline = b.number("teacher_tp_size", int), b.number("teacher_pp_size", int)
    engine_gpus = tensor * pipeline
    if gpus % engine_gpus:
        raise NotAKDFlowCommand(
            f"{gpus} GPUs do not divide into teachers of --teacher_tp_size x --teacher_pp_size = "
            f"{engine_gpus} (KDFlow refuses it too, kdflow/arguments/__init__.py:107-112)"
        )
    b.set("spec.teacher.model", b.value("teacher_name_or_path"))
    b.set("spec.teacher.tensorParallel", tensor)
    b.set("spec.teacher.pipelineParallel", pipeline)
    b.set("spec.teacher.expertParallel", min(b.number("teacher_ep_size", int), tensor))
    b.set("spec.teacher.replicas", gpus // engine_gpus)
    b.set("spec.teacher.gpusPerReplica", engine_gpus)
    if engine_gpus > per_node:
        b.set("spec.teacher.nodesPerReplica", engine_gpus // per_node)
    b.carry("teacher_mem_fraction_static", "teacher.memFractionStatic")
    if b.value("teacher_quantization"):
        b.set("spec.teacher.quantization", b.value("teacher_quantization"))
    # KDFlow places every role on the same GPUs (one placement group), whatever enable_sleep says.
    b.set("spec.cluster.colocate", True)
    # KDFlow's off-policy trainer gathers this many global batches for one teacher forward between the
    # teacher's wake-up and sleep (`teacher_forward_n`), then trains them one step each.
    b.carry("teacher_forward_n_batches", "teacher.stepsPerWake", int)


def _attention(b: _Builder, mode: str) -> None:
    """KDFlow hands --attn_implementation to the student's from_pretrained only; its teacher and rollout run
    on SGLang, which has no backend for flash_attention_2 or eager (spec.student.attention): with those
    engines the student keeps sdpa, said on stderr."""
    if "attn_implementation" not in b.given:
        return
    kernel = b.value("attn_implementation")
    if kernel in ("flash_attention_2", "eager") and mode != "sft":
        b.note(
            "attn_implementation",
            "dropped: spec.student.attention would carry it to the SGLang teacher and rollout engines, which "
            "have no such backend; the student keeps sdpa",
        )
        return
    b.set("spec.student.attention", kernel)


def _rollout(b: _Builder, mode: str) -> None:
    # Self-distillation comes only from KDFlow's on-policy trainer (`_mode`), which always samples.
    if mode not in ("onPolicy", "selfDistillation"):
        return
    tensor = b.number("rollout_tp_size", int)
    gpus = b.number("num_nodes", int) * b.number("num_gpus_per_node", int)
    b.set("spec.rollout.engines", gpus // tensor)
    b.set("spec.rollout.tensorParallel", tensor)
    b.set("spec.rollout.batchSize", b.number("rollout_batch_size", int))
    b.set("spec.rollout.maxNewTokens", b.number("generate_max_len", int))
    b.carry("n_samples_per_prompt", "rollout.samplesPerPrompt", int)
    b.carry("temperature", "rollout.temperature")
    b.carry("top_p", "rollout.topP")
    b.carry("rollout_mem_fraction_static", "rollout.memFractionStatic")
    needed = b.number("prompt_max_len", int) + b.number("generate_max_len", int)
    if b.number("max_len", int) < needed:
        # KDFlow raises max_len itself (kdflow/arguments/__init__.py:99-104).
        b.set("spec.data.maxLength", needed)
        b.note(
            "max_len",
            f"spec.data.maxLength {needed}: --prompt_max_len + --generate_max_len, as KDFlow sets it",
        )


def _data(b: _Builder) -> None:
    paths = [path.strip() for path in b.value("train_dataset_path").split(",")]
    if len(paths) == 1:
        b.set("spec.data.train", _source(b, paths[0], "train_split"))
        if b.value("train_dataset_probs"):
            b.note("train_dataset_probs", "dropped: one training source")
    else:
        b.set("spec.data.mixture", _mixture(b, paths))
    if b.value("eval_dataset_path"):
        b.set("spec.data.eval", _source(b, b.value("eval_dataset_path"), "eval_split"))
    b.carry("max_len", "data.maxLength", int)
    b.carry("prompt_max_len", "data.promptMaxLength", int)
    b.carry("apply_chat_template", "data.applyChatTemplate", bool)


def _mixture(b: _Builder, paths: list[str]) -> list[dict[str, Any]]:
    """KDFlow's comma-separated sources: blended by `datasets.interleave_datasets` with the probabilities,
    until every source is used up (`all_exhausted`), or without probabilities concatenated
    (kdflow/datasets/utils.py:17,88-98 @ 06d050e); each capped at --max_samples (utils.py:80)."""
    given = b.value("train_dataset_probs")
    try:
        weights = [float(p) for p in given.split(",")] if given else [1.0] * len(paths)
    except ValueError:
        raise NotAKDFlowCommand(f"--train_dataset_probs {given}: not numbers") from None
    if len(weights) != len(paths):
        # KDFlow asserts the same (utils.py:33).
        raise NotAKDFlowCommand(
            f"--train_dataset_probs {given}: {len(weights)} probabilities for {len(paths)} datasets"
        )
    if given:
        b.note(
            "train_dataset_probs",
            "spec.data.mixture weights: each epoch holds as many samples as the sources together, shared by "
            "weight, where KDFlow draws by probability until every source is used up (all_exhausted)",
        )
    else:
        b.notes.append(
            "--train_dataset_path (several, no --train_dataset_probs): spec.data.mixture with equal weights, "
            "where KDFlow concatenates them; weigh each source by its record count for the same epochs"
        )
    if "max_samples" in b.given:
        b.note(
            "max_samples",
            "spec.data.mixture[*].maxSamples: each source's first records, as KDFlow takes them; KDFlow then "
            "also keeps only that many of the blend",
        )
    sources = zip(paths, weights, strict=True)
    return [_source(b, path, "train_split") | {"weight": weight} for path, weight in sources]


def _source(b: _Builder, path: str, split: str) -> dict[str, Any]:
    source: dict[str, Any] = {"path": path}
    # KDFlow reads every dataset by split; a file's records are its `train` split in datasets.
    if split in b.given or not DATA_FILE.search(source["path"]):
        source["split"] = b.value(split)
    if "input_key" in b.given:
        source["inputKey"] = b.value("input_key")
    if b.value("teacher_input_key"):
        source["teacherInputKey"] = b.value("teacher_input_key")
    if "max_samples" in b.given and b.number("max_samples", int) < int(KDFLOW_DEFAULTS["max_samples"]):
        source["maxSamples"] = b.number("max_samples", int)
    return source


def _distillation(b: _Builder, mode: str) -> None:
    b.used.update({"kd_algorithm", "kd_loss_fn", "kd_ratio", "kd_temperature", "teacher_update_freq"})
    if mode == "sft":
        return
    algorithm = b.value("kd_algorithm")
    if algorithm not in ALGORITHMS:
        raise NotAKDFlowCommand(f"--kd_algorithm {algorithm}: not one of {', '.join([*ALGORITHMS, 'sft'])}")
    loss_name = b.value("kd_loss_fn")
    if loss_name not in LOSSES:
        raise NotAKDFlowCommand(f"--kd_loss_fn {loss_name}: not one of {', '.join(LOSSES)}")
    loss = LOSSES[loss_name]
    b.set("spec.distillation.algorithm", ALGORITHMS[algorithm])
    b.set("spec.distillation.loss", loss)
    b.carry("kd_ratio", "distillation.kdRatio")
    if loss == "hrl":
        if "kd_temperature" in b.given:
            b.note(
                "kd_temperature", "dropped: KDFlow's hrl never divides by it (hierarchical_ranking_loss.py)"
            )
        if "hrl_topk" in b.given:
            b.note(
                "hrl_topk",
                "dropped, as KDFlow drops it (build_loss_fn passes hrl_topk, the loss reads hr_topk): KDFlow "
                "ranks the top 5, and so does this manifest; set spec.distillation.hrlTopK for what was "
                "meant",
            )
        b.used.add("hrl_topk")
    else:
        b.carry("kd_temperature", "distillation.temperature")
    if mode == "selfDistillation":
        b.carry("teacher_update_freq", "distillation.teacherUpdateFreq", int)
    _loss_settings(b, loss)
    if algorithm == "dskd":
        b.set("spec.distillation.dskdTokenAlign", b.value("dskd_token_align"))
        b.set("spec.distillation.projectorLearningRate", b.number("dskd_projector_lr"))
        b.set("spec.distillation.dskdProjectorInit", "pseudoInverse")
        topk = b.number("dskd_topk_vocab", int)
        if topk != -1:
            b.set("spec.distillation.topkVocab", topk)
        if "dskd_topk_vocab" in b.given:
            b.note(
                "dskd_topk_vocab",
                f"spec.distillation.topkVocab {topk} (pseudoInverse); between two vocabularies the first "
                "k shared tokens are the lowest teacher ids (KDFlow's: its get_vocab() order), and the "
                "student-to-teacher projector follows the student's head as it trains (KDFlow's keeps "
                "the head the job started with)",
            )
    b.used.update({"dskd_token_align", "dskd_projector_lr", "dskd_topk_vocab"})


def _loss_settings(b: _Builder, loss: str) -> None:
    if loss == "jsd":
        beta = b.number("jsd_beta")
        b.set("spec.distillation.jsdBeta", round(1.0 - beta, 12))
        b.note(
            "jsd_beta",
            f"spec.distillation.jsdBeta {round(1.0 - beta, 12)} (KDFlow's beta weighs the student)",
        )
    if loss in ("skl", "srkl"):
        b.carry("skew_lambda", "distillation.skewLambda")
    if loss == "akl":
        alpha = b.number("adaptive_alpha")
        if alpha >= 1.0:
            b.note("adaptive_alpha", "unsupported: a tail of all the mass leaves no head to weigh (pure rkl)")
        else:
            b.set("spec.distillation.adaptiveAlpha", round(1.0 - alpha, 12))
            b.note(
                "adaptive_alpha",
                f"spec.distillation.adaptiveAlpha {round(1.0 - alpha, 12)} (KDFlow's alpha is the tail's "
                "mass, ours the head's; the token straddling the split is KDFlow's head and our tail)",
            )
    for name, used_by in (("jsd_beta", "jsd"), ("skew_lambda", "skl/srkl"), ("adaptive_alpha", "akl")):
        if name in b.given and loss not in used_by.split("/"):
            b.note(name, f"dropped: only --kd_loss_fn {used_by} reads it")
        b.used.add(name)


def _left_out(b: _Builder) -> None:
    for name in b.given:
        if name in b.used:
            continue
        if name in UNSUPPORTED and (b.given[name] != KDFLOW_DEFAULTS[name] or name in RENDERED_DIFFERENTLY):
            b.note(name, f"unsupported: {UNSUPPORTED[name]}")
        elif name in UNSUPPORTED or name in NO_EFFECT_HERE:
            reason = NO_EFFECT_HERE.get(name) or UNSUPPORTED.get(name) or ""
            b.note(name, f"dropped: {reason}")
        else:
            b.note(name, "dropped: not read by this entry point")


def job_name(given: dict[str, str]) -> str:
    """A DNS label from the run's name or its save path, for metadata.name."""
    source = given.get("wandb_run_name") or given.get("save_path", "").rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:MAX_NAME_LENGTH].strip("-")
    return name or "from-kdflow"


def convert(argv: Sequence[str], name: str | None = None) -> Conversion:
    """The manifest of a KDFlow command line. Raises `NotAKDFlowCommand` for what KDFlow would refuse, and
    `InvalidJob` where the converted manifest breaks a rule KDFlow does not have."""
    entry, given = parse_command_line(argv)
    if not given.get("student_name_or_path") or not given.get("train_dataset_path"):
        raise NotAKDFlowCommand("--student_name_or_path and --train_dataset_path are required")
    builder = _Builder(given)
    builder.set("metadata.name", name or job_name(given))
    mode = _mode(entry, given, builder)
    builder.set("spec.mode", mode)
    _models(builder, mode)
    _rollout(builder, mode)
    _distillation(builder, mode)
    _data(builder)
    _training(builder)
    _left_out(builder)
    parse_job(builder.manifest)
    return Conversion(builder.manifest, builder.notes)


__all__ = ["Conversion", "InvalidJob", "NotAKDFlowCommand", "convert"]
