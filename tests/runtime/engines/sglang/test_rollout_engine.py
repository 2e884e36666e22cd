"""The SGLang rollout backend on the real engine (CPU, fp32), against the transformers rollout on the same
tiny model and prompts: what it samples, where responses end, and every way of loading new weights that
runs on a CPU (CPU tensors in an update session, and a gloo broadcast group with the trainer).

One engine for the module; tests that change its weights put the original ones back.
"""

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubedistill.api.spec import Precision, RolloutSpec
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.demo.tiny import build_model
from kubedistill.runtime.engines.layout import single_node_placement
from kubedistill.runtime.engines.sglang.engine import SGLangError, join_weight_sync_group
from kubedistill.runtime.engines.sglang.rollout import SGLangRollout
from kubedistill.runtime.engines.transformers.rollout import TransformersRollout
from kubedistill.runtime.engines.weight_sync import broadcast_tensors, tensor_metas, weight_sync_layout
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.rollout.backend import SamplingConfig
from tests.runtime.conftest import TEACHER, TinyWorld
from tests.runtime.engines.sglang.weights import push_weights
from tests.runtime.engines.sglang.wheel_source import ROOT

pytestmark = pytest.mark.sglang

MAX_NEW_TOKENS = 12
GREEDY = SamplingConfig(
    max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, top_p=1.0, samples_per_prompt=2, seed=0
)


@pytest.fixture(scope="module")
def model(tiny: TinyWorld) -> Path:
    """The tiny teacher: untied lm_head, so `ends_at_once` can steer a single row of it."""
    return tiny.teacher


SAMPLED = SamplingConfig(
    max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, samples_per_prompt=4, seed=0
)


def started(model: Path | str, seed: int) -> SGLangRollout:
    return SGLangRollout(
        RolloutSpec(mem_fraction_static=0.3),
        str(model),
        single_node_placement("cpu"),
        colocate=False,
        precision=Precision.FP32,
        seed=seed,
    )


@pytest.fixture(scope="module")
def seeded(model: Path, prompts: list[list[int]]) -> Iterator[tuple[SGLangRollout, list[list[int]]]]:
    """The module's engine (seed 0) and what it sampled first, before any other test used it."""
    engine = started(model, seed=0)
    try:
        yield engine, engine.generate(prompts, SAMPLED)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def rollout(seeded: tuple[SGLangRollout, list[list[int]]]) -> SGLangRollout:
    return seeded[0]


@pytest.fixture(scope="module")
def prompts(model: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(str(model))
    chats = [
        [{"role": "user", "content": text}]
        for text in ("the teacher scores tokens", "a small student", "distil the knowledge")
    ]
    return [tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] for chat in chats]


def transformers_responses(model_path: Path, prompts: list[list[int]], sampling: SamplingConfig) -> list:
    return TransformersRollout(str(model_path), torch.float32, torch.device("cpu")).generate(
        prompts, sampling
    )


def state_of(path: Path) -> list[tuple[str, torch.Tensor]]:
    return list(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict().items())


def another_model(model_path: Path, directory: Path, seed: int) -> Path:
    """A differently seeded model of the same shape, with the same tokenizer."""
    tokenizer = load_tokenizer(str(model_path))
    build_model(tokenizer, TEACHER, seed=seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def ends_at_once(model_path: Path, directory: Path) -> Path:
    """The model with every token embedded alike and the end-of-sequence row of lm_head raised above the
    rest: its final hidden state is one vector at every position (attention averages identical values), so
    the greedy answer to any prompt is the end-of-sequence token, at once."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    eos = load_tokenizer(str(model_path)).eos_token_id
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[:] = embeddings[0]
        hidden = model.model(torch.tensor([[1, 2, 3]])).last_hidden_state[0, -1]
        head = model.get_output_embeddings().weight
        logits = head @ hidden
        head[eos] += hidden * (logits.max() - logits[eos] + 1.0) / hidden.dot(hidden)
    model.save_pretrained(directory)
    load_tokenizer(str(model_path)).save_pretrained(directory)
    return directory


@pytest.fixture
def restore(rollout: SGLangRollout, model: Path) -> Iterator[None]:
    yield
    push_weights(rollout, state_of(model))


def test_greedy_responses_equal_the_transformers_rollouts_token_for_token(
    rollout: SGLangRollout, prompts: list[list[int]], model: Path
) -> None:
    responses = rollout.generate(prompts, GREEDY)
    assert responses == transformers_responses(model, prompts, GREEDY)
    # Two samples a prompt, prompt-major; cut at max_new_tokens (this random model never ends on its own).
    assert [len(r) for r in responses] == [MAX_NEW_TOKENS] * 6
    assert responses[0] == responses[1]


def test_a_response_ends_with_the_end_of_sequence_token_as_on_transformers(
    rollout: SGLangRollout, prompts: list[list[int]], model: Path, tmp_path: Path, restore: None
) -> None:
    eos = load_tokenizer(str(model)).eos_token_id
    stopping = ends_at_once(model, tmp_path / "stops")
    push_weights(rollout, state_of(stopping))
    responses = rollout.generate(prompts, GREEDY)
    assert responses == [[eos]] * 6
    assert responses == transformers_responses(stopping, prompts, GREEDY)


def test_sampling_takes_temperature_and_top_p(
    rollout: SGLangRollout, prompts: list[list[int]], model: Path
) -> None:
    sampled = rollout.generate(prompts, SAMPLED)
    assert len(sampled) == 12
    # A sampled response may draw the end-of-sequence token (its last) before max_new_tokens.
    eos = load_tokenizer(str(model)).eos_token_id
    assert all(
        len(response) == MAX_NEW_TOKENS or (0 < len(response) < MAX_NEW_TOKENS and response[-1] == eos)
        for response in sampled
    ), sampled
    assert len({tuple(response) for response in sampled}) > 3, "temperature 1 samples differ"
    # A top_p this small keeps only the most likely token: sampling becomes greedy.
    nucleus = rollout.generate(
        prompts,
        SamplingConfig(
            max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1e-6, samples_per_prompt=2, seed=0
        ),
    )
    assert nucleus == rollout.generate(prompts, GREEDY)


RESTARTED = """
import json, sys

# The repository root after the standard library: its folder operator/ must not hide `operator`.
sys.path.append(sys.argv[1])

from tests.runtime.engines.sglang.test_rollout_engine import SAMPLED, started


if __name__ == "__main__":
    model, prompts = sys.argv[2], json.loads(sys.argv[3])
    engine = started(model, seed=0)
    try:
        print(json.dumps(engine.generate(prompts, SAMPLED)))
    finally:
        engine.close()
"""


def test_an_engine_started_with_the_same_seed_samples_the_same_responses(
    seeded: tuple[SGLangRollout, list[list[int]]], prompts: list[list[int]], model: Path, tmp_path: Path
) -> None:
    """SGLang 0.5.23 reads a request's `sampling_seed` only with deterministic inference on, so the job's seed
    reaches the engine once, as `random_seed`, and a restarted engine samples its first batch again as the
    first one did. (`SamplingConfig.seed` per call is honoured by the transformers rollout only.) The
    restarted engine runs in a process of its own, as each engine does in a job (see the next test)."""
    _, first = seeded
    assert len({tuple(response) for response in first}) > 3, "temperature 1: the samples differ"
    script = tmp_path / "restarted.py"
    script.write_text(RESTARTED, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(ROOT), str(model), json.dumps(prompts)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == first


def test_a_second_engine_in_the_same_process_is_refused_before_it_starts(
    rollout: SGLangRollout, model: Path
) -> None:
    # SGLang's shutdown of either would kill the other's scheduler (and, through its watchdog, this process).
    with pytest.raises(SGLangError, match="already runs in this process"):
        started(model, seed=1)
    assert rollout.generate([[1, 2, 3]], GREEDY), "the running engine is untouched"


def test_weights_pushed_as_cpu_tensors_while_asleep_replace_the_model(
    rollout: SGLangRollout, prompts: list[list[int]], model: Path, tmp_path: Path, restore: None
) -> None:
    """Colocated on-policy's path: student rank 0 pushes buckets into one update session; the engine sleeps
    between rounds (SGLang's memory saver is off on the CPU, release and resume still run)."""
    other = another_model(model, tmp_path / "other", seed=9)
    named = state_of(other)
    rollout.sleep()
    push_weights(rollout, named, buckets=2)
    rollout.wake()
    responses = rollout.generate(prompts, GREEDY)
    assert responses == transformers_responses(other, prompts, GREEDY)
    assert responses != transformers_responses(model, prompts, GREEDY)


def test_weights_broadcast_by_the_trainer_over_a_gloo_group_replace_the_model(
    rollout: SGLangRollout, prompts: list[list[int]], model: Path, tmp_path: Path, restore: None
) -> None:
    """Non-colocated on-policy's path on a cluster without GPUs: SGLang's weight-update group takes
    backend gloo, and the trainer (here a thread, as student rank 0) broadcasts CPU tensors over it."""
    other = another_model(model, tmp_path / "other", seed=11)
    named = state_of(other)
    layout = weight_sync_layout([1], "127.0.0.1", free_port(), group_name=f"test-{tmp_path.name}")
    failures: list[BaseException] = []

    def trainer() -> None:
        try:
            group = join_weight_sync_group(layout.trainer, "cpu")
            broadcast_tensors((tensor for _, tensor in named), group)
        except BaseException as error:
            failures.append(error)

    sender = threading.Thread(target=trainer)
    sender.start()
    rollout.init_weight_sync_group(layout.engines[0])
    rollout.receive_weights(tensor_metas(named))
    sender.join(timeout=60)
    assert failures == []
    assert rollout.generate(prompts, GREEDY) == transformers_responses(other, prompts, GREEDY)
