"""Everything SGLang is asked to do, as plain data: engine arguments, request arguments, and the reading of
its answers. Pure functions, no SGLang import; `tests/runtime/engines/sglang/` checks every key built here
against the source of the pinned SGLang release (the `sglang` extra in pyproject.toml), parsed from its wheel.

Facts of SGLang 0.5.23 these functions rely on (file paths inside the `sglang` package):

- Hidden states are the `hidden_states` argument of `LogitsProcessor.forward`
  (`srt/layers/logits_processor.py`): the final layer's output *after* the model's final norm, i.e. exactly
  the input of `lm_head`, full width on every tensor-parallel rank. Two exceptions: a model that passes
  `hidden_states_before_norm` gets those returned instead ("we always prefer to return it"), and EAGLE3-style
  auxiliary capture returns concatenated middle layers. We never configure speculative decoding, and the
  architectures whose target forward passes pre-norm (or pre-scaling) states are refused by
  `refuse_unusable_hidden_states` (the test derives that list from the wheel's `srt/models/`).
  Recomputing logits as `lm_head(h)` skips a model's `logit_scale` / `final_logit_softcapping` (Gemma-2,
  Cohere), exactly as the transformers backend's `hidden_states[-1]` does.
- They come back as nested Python lists of floats (`.cpu().tolist()` in
  `srt/managers/scheduler_components/batch_result_processor.py`) in `meta_info["hidden_states"]`: entry 0 is
  the prefill block, [prompt_len][hidden], followed by one [hidden] row per decode step. The teacher's
  engine replaces that step in its schedulers (`kubedistill.runtime.engines.sglang.hidden_states`) and
  reads the rows from shared memory instead. With chunked prefill the prefill block is split into one
  entry per chunk, and prefix-cached tokens are not recomputed at all: hence `chunked_prefill_size=-1` and
  `disable_radix_cache`.
- The output streamer (`output_streamer.py`) cuts that list to `req.finished_len` entries, and a request
  with `max_new_tokens=0` finishes with `finished_len == 0`: it returns *no* hidden states. We ask for one new
  token instead; the request then finishes at its prefill (no decode step) and returns exactly the prefill
  block.
- `dp_size` replicates the model inside one engine on consecutive GPUs from `base_gpu_id` (the
  data-parallel controller), but only on one node ("multi-node data-parallel replicas are not supported"),
  and an engine with `dp_size > 1` refuses `update_weights_from_tensor` / `..._from_distributed`.
- On node ranks >= 1 `Engine(...)` blocks until its schedulers exit unless
  `SGLANG_BLOCK_NONZERO_RANK_CHILDREN=0`; such an engine has no tokenizer manager and serves no requests
  (node rank 0 drives them all).
- Per-request `sampling_seed` is honoured only under `enable_deterministic_inference` (slower kernels); the
  engine-wide `random_seed` seeds sampling otherwise.
- Images of a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `QwenVLImageProcessor.models`,
  `srt/multimodal/processors/qwen_vl.py:332-349`) go in as what the HF image processor made, beside
  `input_ids` that already hold the expanded image tokens: see `image_data_for`.
"""

from typing import Any

import numpy as np
import torch

from kubedistill.api.job import SpecError
from kubedistill.api.spec import Attention, Precision, RolloutSpec, TeacherSpec
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.layout import EnginePlacement
from kubedistill.runtime.engines.sglang.hidden_states import read_prefill_rows
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.teacher.backend import TeacherBatch

ENGINE_DTYPES = {Precision.BF16: "bfloat16", Precision.FP32: "float32"}

CPU_KV_CACHE_TOKENS = 16384
"""The KV cache of an engine placed on the CPU, in tokens. There SGLang sizes the cache as
`mem_fraction_static` of the whole machine's free RAM and writes every page of it (measured: a tiny model's
scheduler at 7.3 GB resident with 0.3 of 21 GB free), so two or three engines beside Ray and the student
ranks exhaust a machine. A CPU engine serves tests and local runs of small models: 16384 tokens hold one
16k-token sequence, or a whole tiny micro-batch, and a request longer than the cache is aborted by SGLang
naming its length. On GPUs SGLang's own sizing stands (None)."""

BLOCK_NONZERO_RANK_CHILDREN = "SGLANG_BLOCK_NONZERO_RANK_CHILDREN"
USE_CPU_ENGINE = "SGLANG_USE_CPU_ENGINE"
"""SGLang 0.5.23's CPU switch (`srt/utils/common.py` `is_cpu()`, read by `srt/platforms` and every layer):
device, attention backend (torch_native without AMX) and sampling backend (pytorch) follow from it. Without
it SGLang takes its CUDA path on a machine without CUDA (it imports vllm there)."""
MEMORY_SAVER_CUDA_GRAPH = "SGLANG_MEMORY_SAVER_CUDA_GRAPH"

NCCL_ENVIRONMENT = {"NCCL_CUMEM_ENABLE": "0"}
"""NCCL settings shared by every member of the weight-update group (student rank 0 and the engines' ranks).
SGLang 0.5.23 sets `NCCL_CUMEM_ENABLE` in its processes when it is unset, to
`str(int(cfg.enable_symm_mem or kv_shard_symmetric_scratch))`, "0" for our engines (neither is enabled)
(`srt/entrypoints/engine.py:1898-1907`, `_set_envs_and_config`); NCCL's own default is cuMem on, and peers
of one communicator with different cuMem settings fail to connect. Both sides get it set explicitly."""

PRE_NORM_HIDDEN_STATE_ARCHITECTURES = frozenset(
    {
        "DeepseekV4ForCausalLM",
        "DeepseekV4ForCausalLMNextN",
        "Gemma4AssistantForCausalLM",
        "Gemma4UnifiedAssistantForCausalLM",
        "GigaChat35ForCausalLMNextN",
        "InklingForConditionalGeneration",
        "InklingForConditionalGenerationMTP",
        "MiMoV2MTP",
        "Step3p5ForCausalLM",
        "Step3p5MTP",
    }
)
"""Architectures whose SGLang 0.5.23 model hands `hidden_states_before_norm` to the logits processor on the
forward we run, so the returned states are not the input of `lm_head`."""


SGLANG_ATTENTION_BACKENDS: dict[Attention, str | None] = {
    Attention.SDPA: None,
    Attention.FLASH_ATTENTION_3: "fa3",
    Attention.FLEX_ATTENTION: "flex_attention",
}
"""spec.student.attention in SGLang 0.5.23's `attention_backend` vocabulary (`srt/arg_groups/choices.py:
69-99`, read by `srt/arg_groups/fields/exec_.py:207-213`); None keeps SGLang's own choice. FlashAttention-2
and eager attention have no SGLang backend."""


def sglang_attention_backend(attention: Attention, placement: EnginePlacement) -> str | None:
    """SGLang's `attention_backend` for the job's kernel. An engine on the CPU keeps the backend SGLang's CPU
    switch picks (`USE_CPU_ENGINE`): the GPU kernels do not run there."""
    if attention not in SGLANG_ATTENTION_BACKENDS:
        raise SpecError(
            "spec.student.attention",
            f"{attention} has no SGLang counterpart (SGLang engines take sdpa, flash_attention_3 or "
            "flex_attention); choose one of those, or set the engines' backend to transformers",
        )
    return SGLANG_ATTENTION_BACKENDS[attention] if placement.device == "cuda" else None


def teacher_engine_args(
    teacher: TeacherSpec,
    model_path: str,
    placement: EnginePlacement,
    *,
    colocate: bool,
    precision: Precision,
    attention: Attention = Attention.SDPA,
    seed: int | None = None,
) -> dict[str, Any]:
    """`sglang.Engine` keyword arguments of one teacher replica: whole-sequence prefill, hidden states out.
    `seed` seeds its sampling, as a rollout engine's, for a teacher that writes steps' responses
    (sequence-level KD); None, for one that only scores, leaves SGLang to draw one (SGLang 0.5.23
    `srt/arg_groups/serving_hook.py:660-665`)."""
    if placement.nnodes != teacher.nodes_per_replica:
        raise ValueError(
            f"placement spans {placement.nnodes} nodes but spec.teacher.nodesPerReplica is "
            f"{teacher.nodes_per_replica}"
        )
    data_parallel = teacher.gpus_per_replica // (teacher.tensor_parallel * teacher.pipeline_parallel)
    if data_parallel > 1 and placement.nnodes > 1:
        raise SpecError(
            "spec.teacher.gpusPerReplica",
            "SGLang runs data-parallel replicas of one engine on a single node "
            "only; with nodesPerReplica > 1 set gpusPerReplica to tensorParallel x pipelineParallel",
        )
    return {
        "model_path": model_path,
        "dtype": ENGINE_DTYPES[precision],
        "quantization": None if teacher.quantization is None else str(teacher.quantization),
        "skip_tokenizer_init": True,
        "enable_return_hidden_states": True,
        "disable_radix_cache": True,
        "chunked_prefill_size": -1,
        "tp_size": teacher.tensor_parallel,
        "pp_size": teacher.pipeline_parallel,
        "dp_size": data_parallel,
        "ep_size": teacher.expert_parallel,
        "mem_fraction_static": teacher.mem_fraction_static,
        "random_seed": seed,
        "attention_backend": sglang_attention_backend(attention, placement),
        **_colocation_args(colocate, placement),
        **_placement_args(placement),
    }


def rollout_engine_args(
    rollout: RolloutSpec,
    model_path: str,
    placement: EnginePlacement,
    *,
    colocate: bool,
    precision: Precision,
    seed: int,
    attention: Attention = Attention.SDPA,
) -> dict[str, Any]:
    """`sglang.Engine` keyword arguments of one rollout engine (token ids in and out, prefix cache on)."""
    if placement.nnodes != 1:
        raise SpecError("spec.rollout.tensorParallel", "a rollout engine runs on one node")
    return {
        "model_path": model_path,
        "dtype": ENGINE_DTYPES[precision],
        "skip_tokenizer_init": True,
        "tp_size": rollout.tensor_parallel,
        "mem_fraction_static": rollout.mem_fraction_static,
        "random_seed": seed,
        "attention_backend": sglang_attention_backend(attention, placement),
        **_colocation_args(colocate, placement),
        **_placement_args(placement),
    }


def uses_memory_saver(placement: EnginePlacement, *, colocate: bool) -> bool:
    """Whether the engine hands its GPU memory over while asleep, through SGLang's memory saver: colocated
    engines on GPUs. On the CPU there is no GPU memory to hand over and the saver (`torch_memory_saver`) is
    CUDA-only; sleep and wake still release and resume the engine's memory there, without it."""
    return colocate and placement.device == "cuda"


def _colocation_args(colocate: bool, placement: EnginePlacement) -> dict[str, Any]:
    # Sleeping releases the weights' GPU memory; the CPU backup brings them back without a reload from disk.
    # The graphs' memory is released with the `cuda_graph` tag only when they were captured inside the
    # memory saver's region, which needs SGLANG_MEMORY_SAVER_CUDA_GRAPH=1 (`engine_environment`; SGLang
    # 0.5.23 `srt/model_executor/runner_backend/full_cuda_graph_backend.py:121-124`). The breakable prefill
    # graph, the default on CUDA (`srt/model_executor/cuda_graph_config.py:119-123`), raises "Breakable CUDA
    # graph is not compatible with memory saver mode" under that setting (`breakable_cuda_graph_backend.py:
    # 84-94`), so colocated engines turn the prefill graph off, as KDFlow does (None: SGLang's default). The
    # teacher only prefills whole long sequences, where a graph saves little; rollout decode keeps its graphs.
    saver = uses_memory_saver(placement, colocate=colocate)
    return {
        "enable_memory_saver": saver,
        "enable_weights_cpu_backup": saver,
        "cuda_graph_backend_prefill": "disabled" if saver else None,
    }


def _placement_args(placement: EnginePlacement) -> dict[str, Any]:
    return {
        "base_gpu_id": placement.base_gpu_id,
        "nnodes": placement.nnodes,
        "node_rank": placement.node_rank,
        "dist_init_addr": placement.dist_init_addr,
        "device": placement.device,
        # An idle scheduler polls for requests without pause (SGLang 0.5.23 `srt/managers/scheduler.py:
        # 6160-6162`, `arg_groups/fields/device.py:74`: off by default). On a GPU node that is one host core
        # per engine, SGLang's own trade; on the CPU it is a core taken from the engine's own work and the
        # student ranks beside it (measured: 0.85-1.0 of a core idle, 0.02 with it on).
        "sleep_on_idle": placement.device == "cpu",
        "max_total_tokens": CPU_KV_CACHE_TOKENS if placement.device == "cpu" else None,
    }


def engine_environment(placement: EnginePlacement, *, colocate: bool) -> dict[str, str]:
    """Environment of the process that constructs the engine, inherited by its scheduler processes."""
    # Read by SGLang on node ranks >= 1 (see the module docstring).
    environment = {BLOCK_NONZERO_RANK_CHILDREN: "0", **NCCL_ENVIRONMENT}
    if placement.device == "cpu":
        environment[USE_CPU_ENGINE] = "1"
    if uses_memory_saver(placement, colocate=colocate):
        environment[MEMORY_SAVER_CUDA_GRAPH] = "1"  # see `_colocation_args`
    return environment


def teacher_weight_update_refusal(engine_args: dict[str, Any]) -> str | None:
    """Why an engine built from `engine_args` cannot take new weights in place, or None if it can."""
    if engine_args.get("dp_size", 1) > 1:
        return (
            "SGLang cannot update the weights of an engine with data-parallel replicas "
            f"(dp_size={engine_args['dp_size']}): set spec.teacher.gpusPerReplica to tensorParallel x "
            "pipelineParallel and raise spec.teacher.replicas instead"
        )
    if engine_args.get("nnodes", 1) > 1:
        return (
            "tensors reach SGLang's schedulers through shared memory, which stays on one node: "
            "set spec.teacher.nodesPerReplica to 1"
        )
    return None


def refuse_unusable_hidden_states(architectures: list[str], model_path: str) -> None:
    unusable = sorted(PRE_NORM_HIDDEN_STATE_ARCHITECTURES.intersection(architectures))
    if unusable:
        raise SpecError(
            "spec.teacher.backend",
            f"SGLang returns the hidden states of {model_path} ({', '.join(unusable)}) "
            "before its final norm or output scaling, so lm_head would not recompute the teacher's logits "
            "from them; use backend transformers for this teacher",
        )


def hidden_state_sampling_params() -> dict[str, Any]:
    # One new token, not zero: see the module docstring (max_new_tokens=0 returns no hidden states).
    return {"max_new_tokens": 1}


def rollout_sampling_params(sampling: SamplingConfig) -> dict[str, Any]:
    return {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }


def rollout_input_ids(prompts: list[list[int]], samples_per_prompt: int) -> list[list[int]]:
    """Each prompt repeated `samples_per_prompt` times, prompt-major.

    Repeated requests rather than SGLang's `n`: its parallel-sampling path first prefills every prompt
    alone, one after the other, and SGLang itself advises duplicating requests instead.
    """
    return [prompt for prompt in prompts for _ in range(samples_per_prompt)]


IMAGE_ARCHITECTURES = frozenset(
    {
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3_5ForConditionalGeneration",
        "Qwen3_5MoeForConditionalGeneration",
    }
)
"""The architectures whose images `image_data_for` sends: SGLang 0.5.23 counts them multimodal
(`multimodal_model_archs`, `srt/configs/model_config.py:2391`) and runs them through `QwenVLImageProcessor`
(`srt/multimodal/processors/qwen_vl.py:336-349`), whose Qwen-VL models take `pixel_values` and
`image_grid_thw` as `runtime.data.images` makes them. The test of this set derives it from that list, less the
models it leaves out on purpose (`tests/runtime/engines/sglang/test_sglang_facts.py`, `NOT_QWEN_VL_IMAGES`).
For any other model SGLang builds no multimodal processor and drops a request's `image_data` without a word
(`srt/managers/tokenizer_manager.py:1159-1161`, then `mm_inputs = None` at `1268-1269`)."""


def refuse_images_for(architectures: list[str], model_path: str) -> None:
    """`ValueError` when a model of `architectures` is sent images SGLang would silently ignore."""
    if not IMAGE_ARCHITECTURES.intersection(architectures):
        named = ", ".join(architectures) or "no architecture"
        raise ValueError(
            f"a batch has images but the SGLang teacher {model_path} ({named}) is not a vision-language "
            f"model SGLang takes images for ({', '.join(sorted(IMAGE_ARCHITECTURES))}); it would score the "
            "image tokens without the images"
        )


PROCESSOR_OUTPUT = "processor_output"
"""The `format` of an `image_data` item that is an HF processor's output (SGLang 0.5.23
`srt/multimodal/processors/base_processor.py:1061-1080`, `_get_preprocessed_input_format`)."""


def image_data_for(images: list[ImageInputs | None]) -> list[list[dict[str, Any]]] | None:
    """`Engine.generate`'s `image_data` for a batch whose sequences have `images` (one entry per sequence,
    None for a sequence without images); None when no sequence has any (an empty `images` list).

    Facts of SGLang 0.5.23 this relies on (paths inside the `sglang` package):

    - A batch's `image_data` is one list per request; an empty list is a request without images
      (`srt/managers/io_struct.py:645-684`, `_normalize_image_data`, and `has_valid_data`,
      `srt/multimodal/mm_utils.py:53-58`). A request's images in the processor-output format must be
      exactly one item (`base_processor.py:1220-1237`): one dict holding every image's patches and grids,
      which is what `ImageInputs` is.
    - The engine builds its multimodal processor for a multimodal model even with `skip_tokenizer_init`
      (`srt/managers/tokenizer_manager.py:612-628`), hands it our `input_ids` when there is no text
      (`tokenizer_manager.py:1178-1182`), and when every item is preprocessed keeps them as they are
      (`base_processor.py:1293-1304`, the "fast path for preprocessed data"; `qwen_vl.py:1081-1089`). The
      image tokens in them must therefore already be expanded, one per merged patch, as the HF processor
      (and `kubedistill.runtime.data.images`) makes them: each image's item gets its `offsets` from the
      runs of the image token in those ids (`base_processor.py:1999-2007`) and its own slice of the patches
      from `image_grid_thw` (`srt/managers/mm_utils.py:1185-1263`, `get_new_expanded_mm_items`).
    - A key becomes part of an image item through `ATTR_NAME_TO_MODALITY` (`pixel_values`,
      `image_grid_thw`: `base_processor.py:420-424`); `pixel_values` is one of the `FEATURE_NAMES`
      (`base_processor.py:456-457`) and becomes the item's `feature`, which the Qwen-VL models
      `torch.cat` with the items' `image_grid_thw`, asserting both are 2-D (`srt/models/qwen2_vl.py:
      499-507`; `qwen2_5_vl.py:765-790`; `qwen3_vl.py:1442-1470`): torch tensors, [patches, C*T*P*P] and
      [images, 3]. The pixels are cast to the vision tower's dtype there, so float32 is sent as is.
    - Positions stay ours: the scheduler replaces each image token by a pad value in place
      (`srt/managers/schedule_batch.py:660-679`, `build_padded_input_ids`) and takes the padded ids only at
      the request's length (`srt/managers/scheduler.py:2850-2870`), so the prefill's hidden-state row i is
      still our token i and `gather_hidden_states` reads the same positions as for text.
    """
    if not any(inputs is not None for inputs in images):
        return None
    return [[] if inputs is None else [_processor_output(inputs)] for inputs in images]


def _processor_output(inputs: ImageInputs) -> dict[str, Any]:
    patches = sum(t * h * w for t, h, w in inputs.image_grid_thw)
    if patches != len(inputs.pixel_values):
        # SGLang would not split such an item per image (`mm_utils.py:1239-1241`) and the vision tower
        # would read a grid that is not the pixels'.
        raise ValueError(
            f"image grids {list(inputs.image_grid_thw)} make {patches} patches, pixel_values has "
            f"{len(inputs.pixel_values)}"
        )
    # Copies: arrays that came through Ray's object store are read-only, which torch.from_numpy warns about.
    return {
        "format": PROCESSOR_OUTPUT,
        "pixel_values": torch.tensor(inputs.pixel_values, dtype=torch.float32),
        "image_grid_thw": torch.tensor(inputs.image_grid_thw, dtype=torch.int64).reshape(-1, 3),
    }


def rollout_image_data(
    images: list[ImageInputs | None] | None, samples_per_prompt: int
) -> list[list[dict[str, Any]]] | None:
    """`image_data` for `rollout_input_ids(prompts, samples_per_prompt)`: each prompt's entry repeated as its
    prompt is (a dict of its own per request, the tensors shared); None when no prompt has images."""
    per_prompt = image_data_for(images or [])
    if per_prompt is None:
        return None
    return [[dict(item) for item in items] for items in per_prompt for _ in range(samples_per_prompt)]


def output_ids(outputs: list[dict[str, Any]]) -> list[list[int]]:
    for index, output in enumerate(outputs):
        _refuse_aborted(output, index)
    return [list(output["output_ids"]) for output in outputs]


def gather_hidden_states(
    outputs: list[dict[str, Any]], batch: TeacherBatch, hidden_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """The rows of `batch.positions` from `Engine.generate` outputs, as one [num_positions, hidden] tensor.

    A prefill block comes either as SGLang's nested float lists, or, from an engine whose scheduler runs
    `sglang_engine.run_scheduler_process`, as an empty chunk whose rows wait in shared memory under
    the request's id (`meta_info["id"]`, SGLang 0.5.23 `srt/managers/tokenizer_manager.py:2507-2508`).
    """
    if len(outputs) != len(batch.sequences):
        raise ValueError(f"{len(outputs)} outputs for {len(batch.sequences)} sequences")
    parts = [torch.empty(0, hidden_size, dtype=dtype)]
    for index, (output, sequence, positions) in enumerate(
        zip(outputs, batch.sequences, batch.positions, strict=True)
    ):
        block = _prefill_block(output, index)
        if positions and not 0 <= min(positions) <= max(positions) < len(sequence):
            raise ValueError(f"sequence {index}: positions outside [0, {len(sequence)})")
        if block == []:
            rows = read_prefill_rows(output["meta_info"]["id"], positions, len(sequence))
        else:
            rows = _listed_rows(block, index, positions, len(sequence))
        if rows.shape[1:] != (hidden_size,):
            raise ValueError(
                f"SGLang returned hidden states of shape {tuple(rows.shape)}, rows of {hidden_size}"
            )
        parts.append(rows.to(dtype))
    return torch.cat(parts)


def _listed_rows(block: list[list[float]], index: int, positions: list[int], length: int) -> torch.Tensor:
    if len(block) != length:
        raise ValueError(
            f"sequence {index}: SGLang returned hidden states for {len(block)} of {length} tokens; prefix "
            "caching and chunked prefill must be off"
        )
    # The values are bf16 (or fp32) numbers spelled as Python floats: float32 holds both exactly. numpy
    # reads nested lists several times faster than torch.tensor does.
    rows = np.asarray([block[position] for position in positions], dtype=np.float32)
    return torch.from_numpy(rows.reshape(len(positions), -1) if positions else rows.reshape(0, len(block[0])))


def _refuse_aborted(output: dict[str, Any], index: int) -> None:
    # Aborts without an HTTP status (e.g. a prompt longer than the context) come back as ordinary outputs.
    reason = output["meta_info"].get("finish_reason")
    if isinstance(reason, dict) and reason.get("type") == "abort":
        raise ValueError(f"sequence {index}: SGLang aborted the request: {reason.get('message')}")


def _prefill_block(output: dict[str, Any], index: int) -> list:
    _refuse_aborted(output, index)
    entries = output["meta_info"].get("hidden_states") or []
    if not entries:
        raise ValueError(
            f"sequence {index}: SGLang returned no hidden states; the engine needs "
            "enable_return_hidden_states and the request max_new_tokens >= 1"
        )
    return entries[0]
