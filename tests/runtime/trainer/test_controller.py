"""The trainer end to end with real parts: Ray actors, a transformers teacher, two FSDP2 ranks on gloo."""

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubedistill.api import parse_job, telemetry
from kubedistill.api.job import SpecError
from kubedistill.runtime.algorithms.base import ALGORITHMS
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.errors import BadRecordError
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import ONE_RANK, TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def _run(tiny: TinyWorld, output: Path, stop: int | None = None, **spec) -> dict:
    job = parse_job(job_manifest(tiny, "trainer-test", **spec))
    options = RunOptions(
        output_dir=output, stop_after_steps=stop, metrics_port=0, progress=False, print_summary=False
    )
    return Trainer(job, options).run().summary


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _history(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_off_policy_distillation_makes_the_loss_fall(straight_run: Path) -> None:
    records = [r for r in _history(straight_run) if r["kind"] == "train"]
    assert len(records) == 6  # 96 records / global batch 16
    losses = [r["loss"] for r in records]
    assert losses == sorted(losses, reverse=True), losses
    assert records[-1]["ce_loss"] < 0.9 * records[0]["ce_loss"]


def test_each_step_record_says_where_rank_zeros_step_went(straight_run: Path) -> None:
    """The parts are timed where they happen and nest: the step's own parts within its compute, the compute
    within the actor's call, the call within the driver's wait for it, that within the step; the next step's
    planning is done inside the call's time, while the ranks compute."""
    for record in (r for r in _history(straight_run) if r["kind"] == "train"):
        compute_parts = record["backbone_seconds"] + record["loss_seconds"] + record["backward_seconds"]
        assert 0 < compute_parts <= record["compute_seconds"]
        in_actor = record["fetch_seconds"] + record["compute_seconds"] + record["optimizer_seconds"]
        assert 0 < in_actor <= record["actor_seconds"] <= record["student_call_seconds"]
        assert 0 < record["plan_seconds"] <= record["student_call_seconds"]
        assert record["teacher_seconds"] + record["student_call_seconds"] <= record["step_seconds"]


def test_the_trained_student_is_exported_with_its_tokenizer(straight_run: Path, tiny: TinyWorld) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(straight_run)
    initial = AutoModelForCausalLM.from_pretrained(tiny.student)
    assert (
        AutoTokenizer.from_pretrained(straight_run).get_vocab()
        == AutoTokenizer.from_pretrained(tiny.student).get_vocab()
    )
    changed = [
        name
        for name, value in model.state_dict().items()
        if not torch.equal(value, initial.state_dict()[name])
    ]
    assert changed, "training changed no weight"


def test_a_run_leaves_metrics_a_plot_and_a_summary(straight_run: Path) -> None:
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert (straight_run / "loss.png").stat().st_size > 1000
    assert summary["bad_records"] == 0


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(
    straight_run: Path, tiny: TinyWorld, tmp_path: Path
) -> None:
    checkpoint = {"path": str(tmp_path / "ckpt"), "everySteps": 3}
    output = tmp_path / "out"
    _run(tiny, output, stop=3, checkpoint=checkpoint)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["prepared", "step-00000003"]
    trainer_state = json.loads((tmp_path / "ckpt" / "step-00000003" / "trainer.json").read_text())
    assert set(trainer_state) == {"step", "epoch", "batch_in_epoch", "bad_records", "skipped_steps"}, (
        "checkpoints hold counters; the records are in metrics.jsonl"
    )
    _run(tiny, output, checkpoint=checkpoint)

    resumed = [r for r in _history(output) if r["kind"] == "train"]
    straight = [r for r in _history(straight_run) if r["kind"] == "train"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6], (
        "the resumed run's history covers the whole job"
    )
    assert resumed[5]["loss"] == pytest.approx(straight[5]["loss"], abs=1e-6)
    for name, value in _weights(straight_run).items():
        torch.testing.assert_close(_weights(output)[name], value, rtol=0, atol=1e-6)


def test_one_rank_and_two_ranks_train_the_same_model(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    """The loss is normalised by the global batch's token count, so sharding the batch changes nothing."""
    _run(tiny, tmp_path, student={"replicas": 1})
    one = [r["loss"] for r in _history(tmp_path) if r["kind"] == "train"]
    two = [r["loss"] for r in _history(straight_run) if r["kind"] == "train"]
    assert one == pytest.approx(two, abs=1e-5)
    for name, value in _weights(tmp_path).items():
        torch.testing.assert_close(_weights(straight_run)[name], value, rtol=1e-4, atol=1e-5)


def test_two_ranks_train_the_same_model_resharding_after_every_forward_or_never(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    """The tiny student stays unsharded through a step (`auto`); `always` gathers and reduces per micro-batch
    and must reach the same weights. The same job cuts every sequence over its two ranks (one context group:
    both ranks hold every micro-batch and train their zigzag chunks), which changes nothing either."""
    _run(tiny, tmp_path, student={"replicas": 2, "reshardAfterForward": "always", "contextParallel": 2})
    always = [r["loss"] for r in _history(tmp_path) if r["kind"] == "train"]
    auto = [r["loss"] for r in _history(straight_run) if r["kind"] == "train"]
    assert always == pytest.approx(auto, abs=1e-5)
    for name, value in _weights(tmp_path).items():
        torch.testing.assert_close(_weights(straight_run)[name], value, rtol=1e-4, atol=1e-5)


def test_context_parallelism_is_refused_for_an_algorithm_with_micro_batch_extras(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """CEL names dskd and simpleCtkd; a plugin's extras describe the whole sequence too, which no chunk
    holds."""

    @ALGORITHMS.register("contextParallelTestExtras")
    class WithExtras(VanillaKD):
        @classmethod
        def micro_batch_extras(cls, samples: list) -> dict[str, torch.Tensor]:
            return {"whole": torch.zeros(len(samples))}

    manifest = job_manifest(
        tiny,
        "cp-extras",
        student={"replicas": 2, "contextParallel": 2},
        distillation={"algorithm": "contextParallelTestExtras"},
    )
    with pytest.raises(SpecError) as refused:
        Trainer(parse_job(manifest), RunOptions(output_dir=tmp_path))
    assert refused.value.field == "spec.student.contextParallel"
    assert "contextParallelTestExtras" in str(refused.value)


@pytest.fixture(scope="module")
def clipped_runs(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference job with its gradients clipped (their norm is about 0.2) on one rank, two FSDP ranks and
    two HSDP ranks that replicate every parameter (a (2, 1) mesh)."""
    layouts = {
        "one rank": {"replicas": 1},
        "sharded": {"replicas": 2},
        "replicated": {"replicas": 2, "fsdpShardSize": 1},
    }
    outputs = {}
    for name, student in layouts.items():
        outputs[name] = tmp_path_factory.mktemp(name.replace(" ", "-"))
        _run(tiny, outputs[name], student=student, training={"maxGradNorm": CLIPPED_NORM})
    return outputs


CLIPPED_NORM = 0.05


def test_gradients_are_clipped_to_the_same_norm_however_the_ranks_hold_them(
    clipped_runs: dict[str, Path], straight_run: Path
) -> None:
    """Each rank sums the squares of the gradient elements it holds over how many ranks hold them: sharded or
    replicated, the norm is the whole gradient's, and the clipped step the same."""
    norms = {
        name: [r["grad_norm"] for r in _history(out) if r["kind"] == "train"]
        for name, out in clipped_runs.items()
    }
    assert min(norms["one rank"]) > CLIPPED_NORM, "every step is clipped"
    for name in ("sharded", "replicated"):
        assert norms[name] == pytest.approx(norms["one rank"], rel=1e-4), name
        for key, value in _weights(clipped_runs["one rank"]).items():
            torch.testing.assert_close(_weights(clipped_runs[name])[key], value, rtol=1e-4, atol=1e-5)
    unclipped = _weights(straight_run)
    assert any(
        not torch.allclose(value, unclipped[key], atol=1e-4)
        for key, value in _weights(clipped_runs["one rank"]).items()
    ), "clipping changed the steps"


def test_only_hidden_states_at_target_positions_cross_to_the_students(
    straight_run: Path, tiny: TinyWorld
) -> None:
    from transformers import AutoConfig

    hidden_size = AutoConfig.from_pretrained(tiny.teacher).hidden_size
    for record in (r for r in _history(straight_run) if r["kind"] == "train"):
        assert record["targets"] > 0
        assert record["transfer_bytes"] == record["targets"] * hidden_size * 4, (
            "fp32 hidden states, targets only"
        )
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["transfer_bytes"] == sum(
        r["transfer_bytes"] for r in _history(straight_run) if r["kind"] == "train"
    )


def test_sft_trains_on_the_data_alone_without_a_teacher(tiny: TinyWorld, tmp_path: Path) -> None:
    summary = _run(tiny, tmp_path, stop=2, mode="sft", teacher=None, student=ONE_RANK)
    assert summary["steps"] == 2
    assert summary["transfer_bytes"] == 0
    records = [r for r in _history(tmp_path) if r["kind"] == "train"]
    assert all(r["kd_loss"] == 0.0 and r["loss"] == r["ce_loss"] for r in records)


LOCAL_LABELS = 'distillationjob="metrics-test",distillationjob_namespace="local"'


def test_every_metric_is_served_over_http_while_training(tiny: TinyWorld, tmp_path: Path) -> None:
    manifest = job_manifest(
        tiny,
        "metrics-test",
        student=ONE_RANK,
        data={"eval": {"path": str(tiny.eval)}},
        training={"evalEverySteps": 2},
    )
    trainer = Trainer(
        parse_job(manifest),
        RunOptions(output_dir=tmp_path, metrics_port=0, progress=False, print_summary=False),
    )
    scraped: list[str] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            port = getattr(trainer.metrics, "port", None)
            if port:
                try:
                    body = (
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                    )
                    if f"kubedistill_step{{{LOCAL_LABELS}}} 4.0" in body:
                        scraped.append(body)
                except OSError:
                    pass
            time.sleep(0.05)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        trainer.run()
    finally:
        done.set()
        scraper.join()
    assert scraped, "never saw step 4 on /metrics"
    body = scraped[-1]
    for metric in telemetry.ALL:
        assert f"\n{metric.name}" in body or body.startswith(metric.name), f"{metric.name} missing"
    assert f"kubedistill_eval_teacher_agreement{{{LOCAL_LABELS}}}" in body


def test_a_bad_record_fails_the_run_naming_file_and_line(tiny: TinyWorld, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    lines = tiny.train.read_text().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "hi"}'
    data.write_text("\n".join(lines) + "\n")
    manifest = job_manifest(tiny, "bad-data", data={"train": {"path": str(data)}})
    with pytest.raises(BadRecordError, match=rf"{data}:5:"):
        Trainer(parse_job(manifest), RunOptions(output_dir=tmp_path / "out"))


def test_the_exported_weights_are_as_readable_as_the_files_beside_them(straight_run: Path) -> None:
    """Other pods (an evaluation job, a server) read the output volume as another user."""
    mode = (straight_run / "config.json").stat().st_mode & 0o777
    assert mode & 0o044, "the test needs a umask that lets others read"
    assert {path.name: path.stat().st_mode & 0o777 for path in straight_run.iterdir() if path.is_file()} == {
        path.name: mode for path in straight_run.iterdir() if path.is_file()
    }


def test_skipped_bad_records_and_shortened_ones_are_counted_in_the_summary_and_the_metrics(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """One run (a job start costs more than its checks) with two bad records skipped and one too long."""
    turns = [{"role": "system", "content": "You are a careful tutor."}]
    for turn in range(20):
        turns += [
            {"role": "user", "content": f"What is {turn}+{turn}?"},
            {"role": "assistant", "content": "4"},
        ]
    lines = tiny.train.read_text().splitlines()
    lines[4] = "not json"
    lines[9] = '{"messages": []}'
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([*lines, json.dumps({"messages": turns})]) + "\n")
    job = parse_job(
        job_manifest(
            tiny,
            "truncation-test",
            student=ONE_RANK,
            data={"train": {"path": str(data)}, "onBadRecord": "skip"},
        )
    )
    options = RunOptions(
        output_dir=tmp_path / "out", stop_after_steps=1, metrics_port=0, progress=False, print_summary=False
    )
    trainer = Trainer(job, options)
    trainer.run()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["bad_records"] == 2
    assert [source.split(": ")[0] for source in summary["bad_record_sources"]] == [f"{data}:5", f"{data}:10"]
    assert summary["truncated_records"] == 1
    [source] = summary["truncated_record_sources"]
    assert source.startswith(f"{data}:97: dropped its ")
    assert "earliest messages of 41 (whole turns after the system prompt)" in source
    labels = {telemetry.NAMESPACE_LABEL: options.namespace, telemetry.JOB_LABEL: "truncation-test"}
    assert trainer.metrics.registry.get_sample_value("kubedistill_truncated_records_total", labels) == 1
    assert trainer.metrics.registry.get_sample_value("kubedistill_bad_records_total", labels) == 2
