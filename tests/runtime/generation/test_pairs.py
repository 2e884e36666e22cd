"""Mode preference end to end through `kubedistill run`: the job's teacher answers the prompts (chosen), the
initial student answers them on a rollout engine (rejected), each (prompt, sample) both answered becomes a
pair, and DPO trains the student; on held-out prompts the trained student then prefers the teacher's answers
to its own by more than the initial student did, and is closer to the teacher (KL on the teacher's answers).
The joining of the two files is checked on its own first."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubedistill.runtime.data.chat import ChatFormat
from kubedistill.runtime.demo.data import chat_records
from kubedistill.runtime.generation.engine import training_prompt_ids
from kubedistill.runtime.generation.pairs import pair_lines
from kubedistill.runtime.generation.prompts import Prompt
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import distinct_prompts, example_manifest, write_manifest
from tests.test_bad_inputs import invoke

DPO_FIGURES = {"loss", "margin", "reward_margin", "accuracy", "chosen_reward", "rejected_reward"}


def line(prompt_id: str, sample: int, answer: str) -> dict:
    prompt = [{"role": "user", "content": f"question {prompt_id}"}]
    return {
        "messages": [*prompt, {"role": "assistant", "content": answer}],
        "prompt": prompt,
        "promptId": prompt_id,
        "sample": sample,
        "source": f"prompts.jsonl:{prompt_id}",
    }


def test_pairs_join_the_teachers_and_the_students_answers_by_prompt_and_sample_and_count_the_rest() -> None:
    teacher = [line("a", 0, "A0"), line("a", 1, "A1"), line("b", 0, "B0")]
    student = [line("a", 1, "a1"), line("a", 0, "a0"), line("c", 0, "c0")]
    pairs, unpaired, example = pair_lines(teacher, student)

    assert [
        (p["promptId"], p["sample"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs
    ] == [
        ("a", 0, "A0", "a0"),
        ("a", 1, "A1", "a1"),
    ]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "question a"}]
    assert unpaired == {"noStudentAnswer": 1, "noTeacherAnswer": 1}
    assert example == "prompts.jsonl:b"


def test_the_student_answers_the_prompt_as_training_renders_it_template_switches_included(
    tiny: TinyWorld,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny.student)
    template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% if terse %} Be brief.{% endif %}{% endif %}"
    )
    prompt = Prompt("p", [{"role": "user", "content": "What is 2+2?"}], "prompts.jsonl:1", {})
    ids = {
        terse: training_prompt_ids(tokenizer, prompt, ChatFormat(template, {"terse": terse}))
        for terse in (False, True)
    }
    assert tokenizer.decode(ids[False]) == "user: What is 2+2?\nassistant:"
    assert tokenizer.decode(ids[True]) == "user: What is 2+2?\nassistant: Be brief."


def _answers(model_path: Path, prompts: list[list[int]], seed: int) -> list[list[int]]:
    """Each prompt's sampled answer (8 tokens) from the model at `model_path`."""
    model: Any = AutoModelForCausalLM.from_pretrained(model_path)
    torch.manual_seed(seed)
    answers = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=8)
        answers.append(out[0, len(prompt) :].tolist())
    return answers


def _log_probs(model: torch.nn.Module, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """[answer tokens, vocab]: the model's next-token log-probabilities at each answer token."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    return logits.log_softmax(-1)


def _margin_and_kl(
    model_path: Path, teacher: torch.nn.Module, prompts: list[list[int]], chosen: list, rejected: list
) -> tuple[float, float]:
    """Mean over prompts of log p(teacher's answer) - log p(student's answer), and mean KL(teacher ||
    model) per token of the teacher's answers."""
    model = AutoModelForCausalLM.from_pretrained(model_path)
    margins, kls = [], []
    for prompt, good, bad in zip(prompts, chosen, rejected, strict=True):
        logp_good = _log_probs(model, prompt, good).gather(1, torch.tensor(good)[:, None]).sum()
        logp_bad = _log_probs(model, prompt, bad).gather(1, torch.tensor(bad)[:, None]).sum()
        margins.append(float(logp_good - logp_bad))
        p = _log_probs(teacher, prompt, good)
        kls.append(float((p.exp() * (p - _log_probs(model, prompt, good))).sum(-1).mean()))
    return sum(margins) / len(margins), sum(kls) / len(kls)


def _confident_teacher(tiny: TinyWorld, path: Path) -> Path:
    """The tiny world's teacher with its output head scaled up: a random model's next-token distribution is
    nearly uniform (nothing for the student to move toward, and any preference sharpens it away from it);
    scaled, the same network has firm preferences, which its answers show."""
    model = AutoModelForCausalLM.from_pretrained(tiny.teacher)
    head = model.get_output_embeddings()
    assert head is not None
    with torch.no_grad():
        head.weight.mul_(8.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny.teacher).save_pretrained(path)
    return path


@pytest.mark.usefixtures("ray_session")
def test_a_preference_job_pairs_teacher_over_student_answers_and_dpo_moves_the_student_toward_the_teacher(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    teacher_path = _confident_teacher(tiny, tmp_path / "teacher")
    paths = {
        "demo-output/runs/teacher-sft": teacher_path,
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": distinct_prompts(tmp_path / "prompts.jsonl", 16),
        "demo-output/runs/preference": out,
    }
    manifest = example_manifest("preference", paths, maxNewTokens=8, keepTruncated=True, temperature=0.3)
    spec = manifest["spec"]
    spec["rollout"]["maxNewTokens"] = 8
    spec["training"] |= {"epochs": 2, "maxSteps": 4, "learningRate": 5.0e-3}
    spec["checkpoint"] = {"path": str(tmp_path / "checkpoints")}
    # DPO with the chosen answers' cross-entropy beside it (TRL's [sigmoid, sft]): DPO alone ranks the
    # teacher's answers above the student's but leaves the student's distribution on held-out prompts where
    # it was (their KL to the teacher 0.635664 -> 0.635671 in this run without it).
    spec["preference"] = {**spec.get("preference", {}), "sftWeight": 1.0}
    # Held-out pairs in EasyDistill's own form (strings), evaluated at the end against the reference too.
    held_out = [
        {"prompt": r["messages"][0]["content"], "chosen": r["messages"][1]["content"], "rejected": "no idea"}
        for r in chat_records(4, seed=3)
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in held_out))
    spec["data"]["eval"] = {"path": str(tmp_path / "eval.jsonl")}
    done = invoke(["run", str(write_manifest(tmp_path / "preference.yaml", manifest))])
    assert done.exit_code == 0, done.stderr

    generated = out / "generated"
    teacher_lines = [
        json.loads(text) for text in (generated / "demo-preference.jsonl").read_text().splitlines()
    ]
    student_lines = [
        json.loads(text) for text in (generated / "demo-preference.student.jsonl").read_text().splitlines()
    ]
    pairs = [
        json.loads(text) for text in (generated / "demo-preference.pairs.jsonl").read_text().splitlines()
    ]
    assert len(teacher_lines) == len(student_lines) == len(pairs) == 16
    assert {each["teacher"] for each in student_lines} == {str(tiny.student)}
    assert {each["teacher"] for each in teacher_lines} == {str(teacher_path)}
    assert [p["chosen"][0]["content"] for p in pairs] == [each["response"] for each in teacher_lines]
    by_prompt = {each["promptId"]: each["response"] for each in student_lines}
    assert [p["rejected"][0]["content"] for p in pairs] == [by_prompt[p["promptId"]] for p in pairs]
    assert "preference: 16 pairs in" in done.stdout

    records = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if record["kind"] == "train"]
    assert len(steps) == 4
    assert all(set(step) >= DPO_FIGURES for step in steps)
    # The first step's policy is the reference: DPO's part of the loss is log 2 and no pair is won yet.
    assert steps[0]["loss"] - steps[0]["sft_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert steps[0]["accuracy"] == 0.0
    assert steps[-1]["reward_margin"] > 0.0
    (evaluation,) = [record for record in records if record["kind"] == "eval"]
    assert {f"eval_{name}" for name in DPO_FIGURES} <= set(evaluation)

    # A rerun reuses both sides' answers and the pairs, and has nothing left to train.
    written = (generated / "demo-preference.pairs.jsonl").stat().st_mtime_ns
    again = invoke(["run", str(tmp_path / "preference.yaml")])
    assert again.exit_code == 0, again.stderr
    assert "(reused)" in again.stdout and "is finished" in again.stdout
    assert (generated / "demo-preference.pairs.jsonl").stat().st_mtime_ns == written

    # Held-out prompts: the teacher's and the initial student's own answers, sampled here.
    tokenizer = AutoTokenizer.from_pretrained(tiny.student)

    def rendered(messages: list[dict]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [rendered(record["messages"][:1]) for record in chat_records(12, seed=11)]
    chosen = _answers(teacher_path, prompts, seed=0)
    rejected = _answers(tiny.student, prompts, seed=1)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path)
    margin_before, held_out_kl_before = _margin_and_kl(tiny.student, teacher, prompts, chosen, rejected)
    margin_after, held_out_kl_after = _margin_and_kl(out, teacher, prompts, chosen, rejected)
    # The teacher's answers the student trained on, as the pairs file holds them.
    trained = [rendered(pair["prompt"]) for pair in pairs]
    answers = {
        side: [tokenizer(pair[side][0]["content"], add_special_tokens=False)["input_ids"] for pair in pairs]
        for side in ("chosen", "rejected")
    }
    _, kl_before = _margin_and_kl(tiny.student, teacher, trained, answers["chosen"], answers["rejected"])
    _, kl_after = _margin_and_kl(out, teacher, trained, answers["chosen"], answers["rejected"])
    print(
        f"held-out margin {margin_before:.3f} -> {margin_after:.3f}, held-out KL {held_out_kl_before:.6f} -> "
        f"{held_out_kl_after:.6f}; KL on the teacher's trained answers {kl_before:.4f} -> {kl_after:.4f}"
    )
    assert margin_after > margin_before
    assert held_out_kl_after < held_out_kl_before
    assert kl_after < kl_before
