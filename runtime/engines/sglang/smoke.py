"""A check of the SGLang backends on a real GPU, for a runtime image with SGLang: run by
`images/runtime/gpu-smoke.sh` (`python -m kubedistill.runtime.engines.sglang.smoke`). `make test` runs the
same checks and more on the CPU, on SGLang's own engine in its SGLang tier (`tests/runtime/engines/sglang/
test_teacher_engine.py`, `test_rollout_engine.py`); this script is what only a GPU adds: CUDA devices,
bf16 kernels, the memory saver and NCCL broadcast.

1. A tiny random Qwen3 is saved from a config (`kubedistill.runtime.demo.tiny`, heads 64 wide for SGLang's
   attention kernels, an untied lm_head).
2. Teacher: its hidden states at every position, through the model's lm_head, give transformers' logits
   for the same token ids (bf16 tolerance), having come through shared memory from its patched scheduler
   (`kubedistill.runtime.engines.sglang.hidden_states`), which leaves no file behind; after a push of a
   differently seeded model's weights as CPU tensors in several buckets within one weight-update session
   (as student rank 0 pushes them: self-distillation), the new model's logits.
3. Rollout: greedy responses are, token by token, the argmax of transformers' logits on the same tokens
   (up to bf16 near-ties); after sleeping, the same CPU-tensor push of the other model's weights while
   asleep (one session: the weights wake once) and waking, the responses change and follow the new model.
4. Broadcast weight sync (two GPUs or more; NCCL wants one rank per GPU): a rollout engine on GPU 1 joins a
   group with this process on GPU 0, as student rank 0 does, and takes the other model's weights over it;
   its greedy responses then follow that model.

Engines run one after the other, each with a fifth of the GPU.
"""

import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from kubedistill.api.spec import Precision, RolloutSpec, TeacherSpec
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.demo.tiny import TinyShape, build_model, build_tokenizer, save_tiny
from kubedistill.runtime.engines.layout import EnginePlacement, single_node_placement
from kubedistill.runtime.engines.sglang.engine import join_weight_sync_group
from kubedistill.runtime.engines.sglang.hidden_states import RID_PREFIX, hidden_state_file
from kubedistill.runtime.engines.sglang.rollout import SGLangRollout
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher
from kubedistill.runtime.engines.weight_sync import (
    WeightSyncGroup,
    broadcast_tensors,
    buckets,
    tensor_metas,
    tensor_nbytes,
    weight_sync_layout,
)
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.teacher.backend import TeacherBatch

SHAPE = TinyShape(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    tie_word_embeddings=False,
)
TEXTS = [
    "The teacher scores every token of a sequence in one prefill.",
    "Distillation moves a large model's knowledge into a small one.",
    "On-policy samples come from the student's own weights.",
]
MEMORY_FRACTION = 0.2
LOGIT_TOLERANCE = 0.05
"""Largest gap allowed, relative to the largest reference logit, between SGLang's and transformers' logits."""
SMOKE_BUCKET_BYTES = 1 << 20
"""Small buckets, so that one sync loads several of them in its one weight-update session."""
GREEDY_TOLERANCE = 0.02
"""A greedy token may trail the reference argmax by this much (bf16 near-ties between two kernels)."""


class SmokeFailure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)
    print(f"ok: {message}")


def reference_logits(model: torch.nn.Module, sequence: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([sequence], device="cuda")).logits[0].float()


def push_cpu_tensors(engine: SGLangTeacher | SGLangRollout, model: torch.nn.Module) -> None:
    """What student rank 0 does for a colocated engine: CPU tensors in several buckets, one session."""
    named = [(name, value.detach().to("cpu")) for name, value in model.state_dict().items()]
    engine.begin_weight_update()
    for bucket in buckets(named, tensor_nbytes, SMOKE_BUCKET_BYTES):
        engine.update_weights(bucket)
    engine.end_weight_update()


def check_teacher(model_path: Path, sequences: list[list[int]], models: dict[str, torch.nn.Module]) -> None:
    teacher = SGLangTeacher(
        TeacherSpec(mem_fraction_static=MEMORY_FRACTION),
        str(model_path),
        single_node_placement(),
        colocate=True,
        precision=Precision.BF16,
    )
    try:
        batch = TeacherBatch(sequences=sequences, positions=[list(range(len(s))) for s in sequences])
        check(teacher.hidden_size == SHAPE.hidden_size, "the teacher reports the model's hidden size")
        for name in ("initial", "updated"):
            if name == "updated":
                teacher.sleep()
                teacher.wake()
                push_cpu_tensors(teacher, models[name])
            model = models[name]
            hidden = teacher.hidden_states(batch)
            check(hidden.shape == (batch.num_positions, SHAPE.hidden_size), f"{name}: one row per position")
            logits = hidden.cuda().float() @ model.lm_head.weight.float().T
            reference = torch.cat([reference_logits(model, s) for s in sequences])
            gap = (logits - reference).abs().max().item() / reference.abs().max().item()
            check(
                gap <= LOGIT_TOLERANCE,
                f"{name}: lm_head(hidden states) = transformers' logits (gap {gap:.4f})",
            )
            left = list(hidden_state_file(RID_PREFIX).parent.glob(f"{RID_PREFIX}*"))
            check(not left, f"{name}: hidden states came through shared memory and left no file behind")
    finally:
        teacher.close()


def greedy_gap(model: torch.nn.Module, prompt: list[int], response: list[int]) -> float:
    """How far, at worst, a response token's logit trails the best one, relative to the logit range."""
    logits = reference_logits(model, prompt + response)[len(prompt) - 1 : -1]
    chosen = logits.gather(1, torch.tensor(response, device="cuda")[:, None])[:, 0]
    spread = (logits.max() - logits.min()).item()
    return ((logits.max(dim=1).values - chosen).max() / spread).item()


def check_rollout(model_path: Path, prompts: list[list[int]], models: dict[str, torch.nn.Module]) -> None:
    rollout = SGLangRollout(
        RolloutSpec(mem_fraction_static=MEMORY_FRACTION),
        str(model_path),
        single_node_placement(),
        colocate=True,
        precision=Precision.BF16,
        seed=0,
    )
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0, top_p=1.0, samples_per_prompt=2, seed=0)
    try:
        answers: dict[str, list[list[int]]] = {}
        for name in ("initial", "updated"):
            if name == "updated":
                rollout.sleep()
                push_cpu_tensors(rollout, models[name])
                rollout.wake()
            responses = rollout.generate(prompts, greedy)
            check(len(responses) == 2 * len(prompts), f"{name}: two responses per prompt")
            check(
                all(responses[2 * i] == responses[2 * i + 1] for i in range(len(prompts))), f"{name}: greedy"
            )
            pairs = [(p, r) for p, r in zip(prompts, responses[::2], strict=True) if r]
            gap = max((greedy_gap(models[name], p, r) for p, r in pairs), default=0.0)
            check(gap <= GREEDY_TOLERANCE, f"{name}: responses follow the model's argmax (gap {gap:.4f})")
            answers[name] = responses
        check(answers["initial"] != answers["updated"], "new weights change the responses")
    finally:
        rollout.close()


def check_broadcast(model_path: Path, prompts: list[list[int]], models: dict[str, torch.nn.Module]) -> None:
    if torch.cuda.device_count() < 2:
        print("skipped: broadcast weight sync (needs two GPUs: NCCL has one rank per GPU)")
        return
    rollout = SGLangRollout(
        RolloutSpec(mem_fraction_static=MEMORY_FRACTION),
        str(model_path),
        EnginePlacement(base_gpu_id=1),
        colocate=False,
        precision=Precision.BF16,
        seed=0,
    )
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0, top_p=1.0, samples_per_prompt=1, seed=0)
    named = [(name, tensor.to("cuda:0")) for name, tensor in models["updated"].state_dict().items()]
    layout = weight_sync_layout([1], "127.0.0.1", free_port())

    def trainer_side(group: WeightSyncGroup) -> None:
        # Student rank 0's part, in a thread: the engine's calls block until it has joined and sent.
        process_group = join_weight_sync_group(group, "cuda")
        broadcast_tensors((tensor for _, tensor in named), process_group)

    try:
        before = rollout.generate(prompts, greedy)
        with ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(trainer_side, layout.trainer)
            rollout.init_weight_sync_group(layout.engines[0])
            rollout.receive_weights(tensor_metas(named))
            sending.result()
        after = rollout.generate(prompts, greedy)
        check(before != after, "broadcast: new weights change the responses")
        pairs = [(p, r) for p, r in zip(prompts, after, strict=True) if r]
        gap = max((greedy_gap(models["updated"], p, r) for p, r in pairs), default=0.0)
        check(gap <= GREEDY_TOLERANCE, f"broadcast: responses follow the sent model (gap {gap:.4f})")
    finally:
        rollout.close()


def main() -> int:
    tokenizer = build_tokenizer(TEXTS * 20)
    with tempfile.TemporaryDirectory() as directory:
        model_path = save_tiny(Path(directory) / "tiny-qwen3", tokenizer, SHAPE, seed=0)
        models = {
            "initial": AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval(),
            "updated": build_model(tokenizer, SHAPE, seed=1).to(torch.bfloat16).cuda().eval(),
        }
        chats = [[{"role": "user", "content": text}] for text in TEXTS]
        prompt_texts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
        ]
        prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_texts]
        sequences = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
        try:
            check_teacher(model_path, sequences, models)
            check_rollout(model_path, prompts, models)
            check_broadcast(model_path, prompts, models)
        except SmokeFailure as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
    print("SGLang backends: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
