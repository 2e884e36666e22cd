"""`kubedistill from-kdflow`: KDFlow command lines, taken from KDFlow's own example scripts (songmzhang/KDFlow
@ 3a7a21a, examples/*/*.sh, their OPTS joined), become valid manifests that train the same way, and every
argument without a counterpart is named on stderr."""

import math
from typing import Any

import pytest
import torch
import yaml

from kubedistill.api.job import parse_job
from kubedistill.runtime.losses import KDConfig
from kubedistill.runtime.losses.divergences import generalized_jsd
from tests.test_bad_inputs import Outcome, invoke

COMMON = (
    "--num_nodes 1 --num_gpus_per_node 8 --backend fsdp2 --train_batch_size 128 --micro_train_batch_size 2 "
    "--learning_rate 2e-5 --lr_warmup_ratio 0.05 --num_epochs 1"
)
LOGGING = (
    "--logging_steps 10 --use_wandb True --wandb_project KDFlow --wandb_mode offline --wandb_dir ./output"
)

OFF_POLICY = (  # examples/off_policy_kd/run_qwen3_30b_a3b_to_4b.sh
    f"python -m kdflow.cli.train_kd_off_policy {COMMON} --save_path ./output/qwen3_30b_a3b_to_4b --bf16 True "
    "--gradient_checkpointing True --enable_sleep False --student_name_or_path Qwen3/Qwen3-4B "
    "--teacher_name_or_path Qwen3/Qwen3-30B-A3B --enable_thinking False "
    "--train_dataset_path OpenLeecher/lmsys_chat_1m_clean --max_len 4096 --input_key conversations "
    "--apply_chat_template True --preprocess_num_workers 32 --packing_samples True --kd_ratio 0.5 "
    "--kd_loss_fn kl --kd_algorithm vanilla_kd --teacher_forward_n_batches 10 --teacher_dp_size 2 "
    "--teacher_tp_size 4 --teacher_mem_fraction_static 0.4 "
    f"{LOGGING} --wandb_group off_policy_kd --wandb_run_name qwen3_30b_a3b_to_4b_vanilla_kd"
)
DSKD_OFF_POLICY = (  # examples/cross_tokenizer_kd/run_qwen3_30b_a3b_to_llama3_2_3b_offpolicy.sh
    f"python -m kdflow.cli.train_kd_off_policy {COMMON} --save_path ./output/qwen3_30b_a3b_to_llama3.2_3b "
    "--bf16 True --gradient_checkpointing True --enable_sleep False "
    "--student_name_or_path meta-llama/Llama3.2-3B-Instruct --teacher_name_or_path Qwen3/Qwen3-30B-A3B "
    "--enable_thinking False --train_dataset_path OpenLeecher/lmsys_chat_1m_clean --max_len 4096 "
    "--input_key conversations --apply_chat_template True --preprocess_num_workers 32 --packing_samples True "
    "--kd_ratio 0.5 --kd_loss_fn kl --kd_algorithm dskd --dskd_topk_vocab 20000 --dskd_token_align eta "
    "--dskd_projector_lr 5e-4 --teacher_forward_n_batches 10 --teacher_dp_size 2 --teacher_tp_size 4 "
    f"--teacher_mem_fraction_static 0.4 {LOGGING} --wandb_group cross_tokenizer_kd_offpolicy "
    "--wandb_run_name qwen3_30b_a3b_to_llama3.2_3b_dskd"
)
ON_POLICY = (  # examples/on_policy_kd/run_qwen3_30b_a3b_to_4b.sh
    "python -m kdflow.cli.train_kd_on_policy --num_nodes 1 --num_gpus_per_node 8 --backend fsdp2 "
    "--train_batch_size 128 --micro_train_batch_size 8 --learning_rate 2e-6 --lr_warmup_ratio 0.05 "
    "--num_epochs 1 --save_path ./output/qwen3_30b_a3b_to_4b_opd --bf16 True --gradient_checkpointing True "
    "--enable_sleep True --student_name_or_path Qwen3/Qwen3-4B --teacher_name_or_path Qwen3/Qwen3-30B-A3B "
    "--enable_thinking False --rollout_batch_size 1024 --rollout_num_engines 8 --rollout_tp_size 1 "
    "--rollout_mem_fraction_static 0.6 --n_samples_per_prompt 1 "
    "--train_dataset_path OpenLeecher/lmsys_chat_1m_clean --max_len 4096 --prompt_max_len 2048 "
    "--generate_max_len 2048 --input_key conversations --apply_chat_template True "
    "--preprocess_num_workers 32 --packing_samples True --kd_ratio 1.0 --kd_loss_fn rkl "
    "--kd_algorithm vanilla_kd --teacher_dp_size 2 "
    f"--teacher_tp_size 4 --teacher_mem_fraction_static 0.6 {LOGGING} --wandb_group on_policy_kd "
    "--wandb_run_name qwen3_30b_a3b_to_4b_vanilla_kd"
)
SFT = (  # examples/sft/run_qwen3_4b.sh
    f"torchrun --nproc_per_node=8 -m kdflow.cli.train_sft {COMMON} --save_path ./output/qwen3_4b --bf16 True "
    "--gradient_checkpointing True --train_enable_sleep False --student_name_or_path Qwen3/Qwen3-4B "
    "--enable_thinking False --train_dataset_path OpenLeecher/lmsys_chat_1m_clean --max_len 4096 "
    "--input_key conversations --apply_chat_template True --preprocess_num_workers 32 --packing_samples True "
    f"{LOGGING} --wandb_group off_policy_kd --wandb_run_name qwen3_4b_sft"
)
MINIMAL = "--student_name_or_path s --teacher_name_or_path t --train_dataset_path d.jsonl --teacher_tp_size 1"


def convert(command: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest printed, checked by parse_job, and the stderr notes by argument name."""
    outcome = invoke(["from-kdflow", *command.split()])
    assert outcome.exit_code == 0, outcome.stderr
    manifest = yaml.safe_load(outcome.stdout)
    parse_job(manifest)
    notes = {line.split()[0].removeprefix("--"): line for line in outcome.lines}
    return manifest, notes


def failure(command: str) -> Outcome:
    outcome = invoke(["from-kdflow", *command.split()])
    assert outcome.exit_code == 1
    assert outcome.stdout == ""
    return outcome


def test_kdflows_off_policy_example_becomes_a_colocated_job_with_its_teacher_split_as_kdflow_splits_it() -> (
    None
):
    manifest, _ = convert(OFF_POLICY)
    spec = manifest["spec"]

    assert manifest["metadata"]["name"] == "qwen3-30b-a3b-to-4b-vanilla-kd"
    assert spec["mode"] == "offPolicy"
    assert spec["student"] == {"model": "Qwen3/Qwen3-4B", "replicas": 8, "gradientCheckpointing": True}
    assert spec["teacher"] == {
        "model": "Qwen3/Qwen3-30B-A3B",
        "tensorParallel": 4,
        "pipelineParallel": 1,
        "expertParallel": 1,
        "replicas": 2,
        "gpusPerReplica": 4,
        "memFractionStatic": 0.4,
        "stepsPerWake": 10,
    }
    assert spec["cluster"] == {"gpusPerNode": 8, "colocate": True}
    assert spec["distillation"] == {"algorithm": "vanilla", "loss": "fkl", "kdRatio": 0.5}
    assert spec["data"] == {
        "train": {"path": "OpenLeecher/lmsys_chat_1m_clean", "split": "train", "inputKey": "conversations"},
        "maxLength": 4096,
        "applyChatTemplate": True,
    }
    assert spec["training"] == {
        "epochs": 1,
        "globalBatchSize": 128,
        "microBatchSize": 2,
        "learningRate": 2e-5,
        "warmupRatio": 0.05,
        "logEverySteps": 10,
        "precision": "bf16",
    }
    assert spec["output"] == {"path": "./output/qwen3_30b_a3b_to_4b"}


def test_every_argument_without_a_counterpart_is_named_on_stderr() -> None:
    _, notes = convert(OFF_POLICY)
    assert set(notes) == {
        "backend",
        "enable_sleep",
        "enable_thinking",
        "preprocess_num_workers",
        "packing_samples",
        "teacher_dp_size",
        "use_wandb",
        "wandb_project",
        "wandb_group",
        "wandb_run_name",
        "wandb_mode",
        "wandb_dir",
    }
    assert "unsupported" in notes["enable_thinking"]
    assert "dropped" in notes["packing_samples"]


def test_kdflows_dskd_example_keeps_kdflows_alignment_projector_rate_and_pseudo_inverse_over_topk() -> None:
    manifest, notes = convert(DSKD_OFF_POLICY)
    assert manifest["spec"]["distillation"] == {
        "algorithm": "dskd",
        "loss": "fkl",
        "kdRatio": 0.5,
        "dskdTokenAlign": "eta",
        "projectorLearningRate": 5e-4,
        "dskdProjectorInit": "pseudoInverse",
        "topkVocab": 20000,
    }
    assert notes["dskd_topk_vocab"].startswith("--dskd_topk_vocab 20000: spec.distillation.topkVocab 20000")


def test_dskd_without_alignment_or_projector_rate_gets_kdflows_defaults_not_ours() -> None:
    manifest, _ = convert(f"{MINIMAL} --kd_algorithm dskd")
    distillation = manifest["spec"]["distillation"]
    assert (distillation["dskdTokenAlign"], distillation["projectorLearningRate"]) == ("eta", 1e-4)
    assert distillation["dskdProjectorInit"] == "pseudoInverse" and "topkVocab" not in distillation


def test_kdflows_on_policy_example_gets_one_rollout_engine_per_gpu() -> None:
    manifest, notes = convert(ON_POLICY)
    spec = manifest["spec"]
    assert spec["mode"] == "onPolicy"
    assert spec["rollout"] == {
        "engines": 8,
        "tensorParallel": 1,
        "batchSize": 1024,
        "maxNewTokens": 2048,
        "samplesPerPrompt": 1,
        "memFractionStatic": 0.6,
    }
    assert spec["distillation"] == {"algorithm": "vanilla", "loss": "rkl", "kdRatio": 1.0}
    assert spec["data"]["promptMaxLength"] == 2048
    assert "rollout_num_engines" in notes


def test_an_on_policy_teacher_that_is_the_student_is_self_distillation() -> None:
    manifest, _ = convert(
        "python -m kdflow.cli.train_kd_on_policy --student_name_or_path s --teacher_name_or_path s "
        "--train_dataset_path d.jsonl --teacher_tp_size 1 --teacher_update_freq 4 --rollout_batch_size 128"
    )
    assert manifest["spec"]["mode"] == "selfDistillation"
    assert manifest["spec"]["distillation"]["teacherUpdateFreq"] == 4
    assert manifest["spec"]["rollout"]["engines"] == 8


def test_kdflows_sft_example_behind_torchrun_has_no_teacher() -> None:
    manifest, notes = convert(SFT)
    spec = manifest["spec"]
    assert spec["mode"] == "sft"
    assert "teacher" not in spec and "distillation" not in spec
    assert spec["student"]["replicas"] == 8
    assert "train_enable_sleep" in notes


@pytest.mark.parametrize(("kdflow_beta", "our_beta"), [(0.9, 0.1), (0.5, 0.5), (0.2, 0.8)])
def test_jsd_beta_is_turned_around(kdflow_beta: float, our_beta: float) -> None:
    manifest, notes = convert(f"{MINIMAL} --kd_loss_fn jsd --jsd_beta {kdflow_beta}")
    assert manifest["spec"]["distillation"]["jsdBeta"] == pytest.approx(our_beta, abs=1e-12)
    assert notes["jsd_beta"].startswith(f"--jsd_beta {kdflow_beta}: spec.distillation.jsdBeta")


def test_the_turned_beta_gives_kdflows_jsd() -> None:
    # KDFlow's formula (kdflow/loss/js_div.py:20-28): m = b q + (1 - b) p, b KL(q || m) + (1 - b) KL(p || m).
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 30, generator=generator, dtype=torch.float64)
    log_q, log_p = student.log_softmax(-1), teacher.log_softmax(-1)
    b = 0.9
    log_m = torch.logaddexp(log_q + math.log(b), log_p + math.log(1 - b))
    kdflow = b * (log_q.exp() * (log_q - log_m)).sum(-1) + (1 - b) * (log_p.exp() * (log_p - log_m)).sum(-1)
    manifest, _ = convert(f"{MINIMAL} --kd_loss_fn jsd --jsd_beta {b}")
    ours = generalized_jsd(student, teacher, KDConfig(jsd_beta=manifest["spec"]["distillation"]["jsdBeta"]))
    torch.testing.assert_close(ours, kdflow, rtol=1e-12, atol=0.0)


def test_adaptive_alpha_becomes_the_heads_mass() -> None:
    manifest, notes = convert(f"{MINIMAL} --kd_loss_fn akl --adaptive_alpha 0.3")
    assert manifest["spec"]["distillation"]["adaptiveAlpha"] == pytest.approx(0.7, abs=1e-12)
    assert "adaptive_alpha" in notes


def test_hrl_keeps_what_kdflow_runs_top_5_at_temperature_1_and_says_why() -> None:
    manifest, notes = convert(f"{MINIMAL} --kd_loss_fn hrl --hrl_topk 10 --kd_temperature 2.0")
    distillation = manifest["spec"]["distillation"]
    assert distillation["loss"] == "hrl"
    assert "temperature" not in distillation and "hrlTopK" not in distillation
    assert "hr_topk" in notes["hrl_topk"]
    assert notes["kd_temperature"].startswith("--kd_temperature 2.0: dropped")


def test_a_loss_setting_for_another_loss_is_reported_as_dropped() -> None:
    _, notes = convert(f"{MINIMAL} --kd_loss_fn kl --jsd_beta 0.9")
    assert notes["jsd_beta"] == "--jsd_beta 0.9: dropped: only --kd_loss_fn jsd reads it"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ("--kd_loss_fnn jsd", "--kd_loss_fnn"),
        ("--kd_loss_fn cross_entropy", "--kd_loss_fn cross_entropy"),
        ("--teacher_tp_size 3", "--teacher_tp_size"),
        ("--learning_rate fast", "--learning_rate fast"),
    ],
    ids=["typo", "unknown-loss", "gpus-not-divisible", "not-a-number"],
)
def test_what_kdflow_would_refuse_is_refused_naming_the_argument(arguments: str, named: str) -> None:
    outcome = failure(f"{MINIMAL.replace('--teacher_tp_size 1', '')} {arguments}")
    assert named in outcome.stderr


MIXED = "--student_name_or_path s --teacher_name_or_path t --teacher_tp_size 1 --train_dataset_path a.jsonl,b"


def test_kdflows_weighted_datasets_become_a_mixture_whose_epochs_differ_from_kdflows_said_so() -> None:
    manifest, notes = convert(f"{MIXED} --train_dataset_probs 0.7,0.3 --max_samples 1000 --input_key chat")
    assert manifest["spec"]["data"]["mixture"] == [
        {"path": "a.jsonl", "inputKey": "chat", "maxSamples": 1000, "weight": 0.7},
        {"path": "b", "split": "train", "inputKey": "chat", "maxSamples": 1000, "weight": 0.3},
    ]
    assert "train" not in manifest["spec"]["data"]
    assert "until every source is used up (all_exhausted)" in notes["train_dataset_probs"]
    assert "KDFlow then also keeps only that many of the blend" in notes["max_samples"]


def test_kdflows_max_samples_takes_the_first_records_of_one_source_and_of_its_eval_set() -> None:
    manifest, notes = convert(f"{MINIMAL} --max_samples 500 --eval_dataset_path e.jsonl")
    data = manifest["spec"]["data"]
    assert (data["train"]["maxSamples"], data["eval"]["maxSamples"]) == (500, 500)
    assert "max_samples" not in notes


def test_kdflows_unweighted_datasets_are_concatenated_there_and_weighed_equally_here_said_so() -> None:
    manifest, notes = convert(MIXED)
    assert [source["weight"] for source in manifest["spec"]["data"]["mixture"]] == [1.0, 1.0]
    assert "where KDFlow concatenates them" in notes["train_dataset_path"]


def test_as_many_probabilities_as_datasets_are_needed_as_kdflow_asserts() -> None:
    outcome = failure(f"{MIXED} --train_dataset_probs 1.0")
    assert "--train_dataset_probs 1.0: 1 probabilities for 2 datasets" in outcome.stderr


def test_a_rule_kdflow_does_not_have_is_reported_naming_the_field() -> None:
    # KDFlow's default rollout batch (32 prompts) feeds no whole step of its default 128 sequences.
    outcome = failure(f"python -m kdflow.cli.train_kd_on_policy {MINIMAL}")
    assert "the converted manifest: spec.rollout.batchSize:" in outcome.stderr


def test_the_students_kernels_carry_over_where_sglang_engines_can_follow() -> None:
    manifest, notes = convert(f"{MINIMAL} --attn_implementation flash_attention_3 --use_liger_kernel True")
    assert manifest["spec"]["student"]["attention"] == "flash_attention_3"
    assert manifest["spec"]["student"]["ligerKernel"] is True
    assert "attn_implementation" not in notes


def test_flash_attention_2_stays_with_kdflow_where_its_sglang_engines_have_no_such_backend() -> None:
    manifest, notes = convert(f"{MINIMAL} --attn_implementation flash_attention_2")
    assert "attention" not in manifest["spec"]["student"]
    assert "SGLang teacher and rollout engines, which have no such backend" in notes["attn_implementation"]
    sft, sft_notes = convert(SFT + " --attn_implementation flash_attention_2")
    assert sft["spec"]["student"]["attention"] == "flash_attention_2"
    assert "attn_implementation" not in sft_notes
