"""Facts of the pinned SGLang release that the backends' design rests on (see the docstring of
`kubedistill.runtime.engines.sglang.args`), read from its source. When the pin moves and one of these fails,
the design decision next to it must be reviewed, not just the test."""

import ast

import pytest

from kubedistill.api.spec import Precision, RolloutSpec, TeacherSpec
from kubedistill.runtime.engines.layout import EnginePlacement
from kubedistill.runtime.engines.sglang.args import (
    IMAGE_ARCHITECTURES,
    NCCL_ENVIRONMENT,
    PRE_NORM_HIDDEN_STATE_ARCHITECTURES,
    PROCESSOR_OUTPUT,
    refuse_images_for,
    rollout_engine_args,
    teacher_engine_args,
)
from tests.runtime.engines.sglang.wheel_source import SGLangSource

SCHEDULER_RESULTS = "sglang.srt.managers.scheduler_components.batch_result_processor"
OUTPUT_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer"
TOKENIZER_CONTROL = "sglang.srt.managers.tokenizer_control_mixin"

SAFE_BEFORE_NORM_USERS = {"MiMoV2ForCausalLM", "MiMoV2FlashForCausalLM"}
"""They pass `hidden_states_before_norm` only when `forward_batch.return_hidden_states_before_norm`, which
only speculative-decoding workers set."""


def _function(source: SGLangSource, module: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    return next(
        node
        for node in ast.walk(source.tree(module))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
    )


def test_zero_new_tokens_would_return_no_hidden_states(sglang_source: SGLangSource) -> None:
    # Hidden states are cut to `finished_len` entries, and a length finish sets it to max_new_tokens (0).
    assert "hs = hs[: req.finished_len]" in sglang_source.text(OUTPUT_STREAMER)
    update = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.schedule_batch", "update_finish_state")
    )
    assert "self.finished_len = self.sampling_params.max_new_tokens" in update


def test_a_prefill_returns_one_block_of_python_float_lists(sglang_source: SGLangSource) -> None:
    append = ast.unparse(_function(sglang_source, SCHEDULER_RESULTS, "_append_prefill_hidden_states"))
    assert "req.hidden_states.append(req_hidden_states.cpu().clone().tolist())" in append


def test_hidden_states_are_the_lm_head_input_unless_a_model_supplies_pre_norm_ones(
    sglang_source: SGLangSource,
) -> None:
    store = ast.unparse(
        _function(sglang_source, "sglang.srt.layers.logits_processor", "_get_hidden_states_to_store")
    )
    assert "hidden_states_to_store = hidden_states" in store
    assert "hidden_states_to_store = hidden_states_to_store_before_norm" in store


def test_every_model_returning_pre_norm_hidden_states_is_refused(sglang_source: SGLangSource) -> None:
    suppliers: set[str] = set()
    for path in sglang_source.module_paths("sglang.srt.models"):
        if "hidden_states_before_norm=" not in sglang_source.text(_module(path)):
            continue  # parsing every model file would take half a minute
        tree = sglang_source.tree_at(path)
        passes_before_norm = any(
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("logits_processor")
            and any(
                k.arg == "hidden_states_before_norm" and ast.unparse(k.value) != "None" for k in node.keywords
            )
            for node in ast.walk(tree)
        )
        if passes_before_norm:
            suppliers |= _entry_classes(tree)
    assert suppliers - SAFE_BEFORE_NORM_USERS == PRE_NORM_HIDDEN_STATE_ARCHITECTURES
    assert suppliers >= SAFE_BEFORE_NORM_USERS


def test_only_speculative_decoding_asks_for_pre_norm_hidden_states(sglang_source: SGLangSource) -> None:
    askers = {
        path
        for path in sglang_source.module_paths("sglang.srt")
        if "return_hidden_states_before_norm=True" in sglang_source.text(_module(path))
    }
    assert askers and all(path.startswith("sglang/srt/speculative/") for path in askers)


def test_weight_updates_need_a_session_and_answer_success_and_message(sglang_source: SGLangSource) -> None:
    updater = sglang_source.text("sglang.srt.managers.scheduler_components.weight_updater")
    assert "update_weights_from_tensor must run between" in updater
    assert "update_weights_from_distributed must run between" in updater
    for method in (
        "begin_weight_update",
        "end_weight_update",
        "update_weights_from_tensor",
        "update_weights_from_distributed",
        "init_weights_update_group",
    ):
        returns = _function(sglang_source, TOKENIZER_CONTROL, method).returns
        assert returns is not None and ast.unparse(returns) == "Tuple[bool, str]", method
    assert {"success", "message"} <= set(
        sglang_source.class_fields("sglang.srt.managers.io_struct", "FlushCacheReqOutput")
    )


def test_weight_updates_refuse_data_parallel_engines(sglang_source: SGLangSource) -> None:
    for method in ("update_weights_from_tensor", "update_weights_from_distributed"):
        assert "get_parallel().dp_size == 1" in ast.unparse(
            _function(sglang_source, TOKENIZER_CONTROL, method)
        )


def test_data_parallel_engines_stay_on_one_node(sglang_source: SGLangSource) -> None:
    checks = ast.unparse(
        _function(sglang_source, "sglang.srt.arg_groups.validation_hook", "check_server_args")
    )
    assert "not (cfg.dp_size > 1 and cfg.nnodes != 1)" in checks


def test_resuming_memory_that_is_not_released_fails_in_the_scheduler(sglang_source: SGLangSource) -> None:
    resume = ast.unparse(
        _function(
            sglang_source,
            "sglang.srt.managers.scheduler_components.weight_updater",
            "resume_memory_occupation",
        )
    )
    assert "self.offload_tags.remove(tag)" in resume


def test_a_request_seed_needs_deterministic_inference(sglang_source: SGLangSource) -> None:
    batch_info = sglang_source.text("sglang.srt.sampling.sampling_batch_info")
    assert "if enable_deterministic\n            else None" in batch_info


def test_sglang_turns_nccl_cumem_off_where_we_run_it(sglang_source: SGLangSource) -> None:
    # NCCL_ENVIRONMENT must equal what SGLang picks for our engines, and a value we set must be kept.
    setup = ast.unparse(_function(sglang_source, "sglang.srt.entrypoints.engine", "_set_envs_and_config"))
    assert "if 'NCCL_CUMEM_ENABLE' not in os.environ or cfg.enable_symm_mem:" in setup
    assert (
        "os.environ['NCCL_CUMEM_ENABLE'] = str(int(cfg.enable_symm_mem or kv_shard_symmetric_scratch))"
        in setup
    )
    assert "cfg.enable_kv_cache_sharding" in setup
    options = {"colocate": True, "precision": Precision.BF16}
    for args in (
        teacher_engine_args(TeacherSpec(), "m", EnginePlacement(), **options),
        rollout_engine_args(RolloutSpec(), "m", EnginePlacement(), seed=0, **options),
    ):
        assert not args.get("enable_symm_mem") and not args.get("enable_kv_cache_sharding")
    fields = sglang_source.server_args_fields()
    for flag in ("enable_symm_mem", "enable_kv_cache_sharding"):
        module, _ = fields[flag]
        assert f"{flag}: A[" in sglang_source.text(module)
    assert NCCL_ENVIRONMENT["NCCL_CUMEM_ENABLE"] == str(int(False or False))


def test_graphs_are_freed_by_sleep_only_inside_the_memory_saver_which_breakable_graphs_refuse(
    sglang_source: SGLangSource,
) -> None:
    backends = "sglang.srt.model_executor.runner_backend"
    full = sglang_source.text(f"{backends}.full_cuda_graph_backend")
    breakable = sglang_source.text(f"{backends}.breakable_cuda_graph_backend")
    guarded = 'enable=enable_memory_saver\n            and get_bool_env_var("SGLANG_MEMORY_SAVER_CUDA_GRAPH")'
    assert guarded in full and guarded in breakable
    assert "tag=GPU_MEMORY_TYPE_CUDA_GRAPH" in full
    assert "Breakable CUDA graph is not compatible with memory saver mode" in breakable
    default = ast.unparse(
        _function(sglang_source, "sglang.srt.model_executor.cuda_graph_config", "default_prefill_backend")
    )
    assert "return Backend.BREAKABLE if is_cuda() else Backend.DISABLED" in default
    release = ast.unparse(
        _function(
            sglang_source,
            "sglang.srt.managers.scheduler_components.weight_updater",
            "release_memory_occupation",
        )
    )
    assert "self.memory_saver_adapter.pause(GPU_MEMORY_TYPE_CUDA_GRAPH)" in release


def test_pipeline_parallel_engines_relay_no_hidden_states_and_tensor_parallel_spans_nodes(
    sglang_source: SGLangSource,
) -> None:
    # Why spec.teacher.pipelineParallel must be 1 with SGLang, and how the two-node example spans its nodes.
    relay = ast.unparse(_function(sglang_source, "sglang.srt.managers.utils", "get_logprob_from_pp_outputs"))
    assert "hidden_states=None" in relay
    assert "get_logprob_from_pp_outputs(pp_outputs)" in sglang_source.text(
        "sglang.srt.managers.scheduler_pp_mixin"
    )
    ranks = ast.unparse(_function(sglang_source, "sglang.srt.entrypoints.engine", "_calculate_rank_ranges"))
    assert "nnodes_per_pp_rank = max(nnodes // parallel.pp_size, 1)" in ranks
    assert "tp_size_per_node = parallel.tp_size // nnodes_per_tp_group" in ranks


MM_PROCESSOR = "sglang.srt.multimodal.processors.base_processor"
QWEN_VL_PROCESSOR = "sglang.srt.multimodal.processors.qwen_vl"
NOT_QWEN_VL_IMAGES = {
    "Qwen3_5ForCausalLMMTP": "Qwen3.5's multi-token-prediction draft model, never a teacher",
    "Qwen3OmniMoeForConditionalGeneration": "a thinker-talker model with audio and video: its language model "
    "and lm_head sit under `thinker`, which the teacher's head loading does not read",
    "Qwen4ExpForConditionalGeneration": "an experimental model without a published Hugging Face processor",
    "InternS2PreviewForConditionalGeneration": "another family, whose image tokens and processor are its own",
    "InternS2MobiusForConditionalGeneration": "another family, whose image tokens and processor are its own",
    "Cosmos3ForConditionalGeneration": "another family, whose image tokens and processor are its own",
}
"""Models SGLang's `QwenVLImageProcessor` serves that a teacher with pictures is refused for, and why."""


def qwen_vl_processor_models(sglang_source: SGLangSource) -> set[str]:
    _, processor = sglang_source.class_def(QWEN_VL_PROCESSOR, "QwenVLImageProcessor")
    (models,) = [
        s.value
        for s in processor.body
        if isinstance(s, ast.Assign) and any(ast.unparse(t) == "models" for t in s.targets)
    ]
    assert isinstance(models, ast.List)
    return {ast.unparse(model) for model in models.elts}


def multimodal_model_archs(sglang_source: SGLangSource) -> set[str]:
    """The names written in SGLang's `multimodal_model_archs` list (some of it is spliced from others)."""
    (archs,) = [
        s.value
        for s in sglang_source.tree("sglang.srt.configs.model_config").body
        if isinstance(s, ast.Assign) and any(ast.unparse(t) == "multimodal_model_archs" for t in s.targets)
    ]
    return {e.value for e in ast.walk(archs) if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def test_teachers_take_pictures_for_every_qwen_vl_model_sglangs_processor_serves(
    sglang_source: SGLangSource,
) -> None:
    served = qwen_vl_processor_models(sglang_source)
    assert served >= NOT_QWEN_VL_IMAGES.keys(), "a model left out on purpose is no longer served: review"
    assert served - NOT_QWEN_VL_IMAGES.keys() == IMAGE_ARCHITECTURES
    for architecture in ("Qwen3VLMoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration"):
        refuse_images_for([architecture], "teacher")


def test_the_teacher_refuses_images_sglang_would_drop(sglang_source: SGLangSource) -> None:
    tokenize = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.tokenizer_manager", "_tokenize_one_request")
    )
    assert "should_run_mm_processor = self.mm_processor is not None and (contains_mm_input or is_mossvl)" in (
        tokenize
    )
    assert "else:\n        self.mm_processor = self.processor = None" in ast.unparse(
        _function(sglang_source, "sglang.srt.managers.tokenizer_manager", "init_tokenizer_and_processor")
    )
    refuse_images_for(["Qwen2_5_VLForConditionalGeneration"], "m")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        refuse_images_for(["Qwen2ForCausalLM"], "m")


def test_qwen_vl_models_take_images_through_sglangs_qwen_vl_processor(sglang_source: SGLangSource) -> None:
    assert qwen_vl_processor_models(sglang_source) >= IMAGE_ARCHITECTURES
    # It is built for a multimodal model even when the engine has no tokenizer (skip_tokenizer_init).
    init = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.tokenizer_manager", "init_tokenizer_and_processor")
    )
    multimodal = "if self.model_config.is_multimodal and (not get_disagg().language_model_only):"
    assert (
        init.index(multimodal)
        < init.index("self.mm_processor = get_mm_processor(")
        < init.index("if get_serving().skip_tokenizer_init:")
    )
    # `ModelConfig.is_multimodal` (`is_multimodal_model`) holds for the architectures of this list.
    assert multimodal_model_archs(sglang_source) >= IMAGE_ARCHITECTURES


def test_a_requests_processor_output_is_one_item_beside_its_input_ids(sglang_source: SGLangSource) -> None:
    base = sglang_source.text(MM_PROCESSOR)
    assert "you must pass exactly one item" in base
    # Our input_ids reach the processor (there is no text) and come back as the request's input_ids.
    tokenize = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.tokenizer_manager", "_tokenize_one_request")
    )
    assert "else input_text or input_ids" in tokenize
    assert "input_text=mm_processor_input" in tokenize
    assert (
        "if mm_inputs and mm_inputs.input_ids is not None:\n            input_ids = mm_inputs.input_ids"
        in tokenize
    )
    # Preprocessed items keep them as they are: no decode, no re-tokenisation, no expansion of placeholders.
    load = ast.unparse(_function(sglang_source, MM_PROCESSOR, "load_mm_data"))
    assert "input_ids = prompt if isinstance(prompt, list) else None" in load
    assert (
        "if input_ids is not None and self._all_mm_data_is_preprocessed(image_data, video_data, "
        "audio_data):\n"
        "        return BaseMultiModalProcessorOutput(input_text='', input_ids=input_ids,"
    ) in load
    combine = ast.unparse(_function(sglang_source, MM_PROCESSOR, "process_and_combine_mm_data"))
    assert "input_ids = self._ensure_input_ids_is_tensor(base_output.input_ids)" in combine
    assert "if input_format == MultimodalInputFormat.PROCESSOR_OUTPUT:" in combine
    assert "items = self.collect_mm_items_from_processor_output(dict_item)" in combine
    # Each image's span is a run of the image token in those ids: the tokens must already be expanded.
    assert "mm_item.offsets = self.get_mm_item_offsets(input_ids=input_ids" in combine
    qwen = ast.unparse(_function(sglang_source, QWEN_VL_PROCESSOR, "_process_mm_data_uncached"))
    assert (
        "if isinstance(base_input_ids, list) and len(base_input_ids) == input_ids.numel():\n"
        "        input_ids_list = base_input_ids"
    ) in qwen
    assert "return MultimodalProcessorOutput(input_ids=input_ids_list" in qwen
    assert PROCESSOR_OUTPUT == "processor_output"  # the format checked in test_signatures


def test_image_tokens_keep_their_positions_so_hidden_states_stay_ours(sglang_source: SGLangSource) -> None:
    pad = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.schedule_batch", "build_padded_input_ids")
    )
    assert "padded_input_ids[start:end + 1] = item.padding_sequence(end - start + 1)" in pad
    apply = ast.unparse(
        _function(sglang_source, "sglang.srt.managers.scheduler", "_try_apply_padded_mm_input_ids")
    )
    assert "if len(padded_input_ids) != recv_input_len:\n        return False" in apply


def test_a_processor_outputs_images_are_split_by_their_grids(sglang_source: SGLangSource) -> None:
    split = ast.unparse(_function(sglang_source, "sglang.srt.managers.mm_utils", "get_new_expanded_mm_items"))
    assert "image_grid_thw = item.model_specific_data.get('image_grid_thw')" in split
    assert "if not _is_rank2_grid(image_grid_thw):" in split
    assert (
        "if feature_len is None or slice_indices[-1] != feature_len:\n"
        "                    expanded_mm_items.append(item)" in split
    )


def test_qwen_vl_models_read_the_feature_and_grids_as_tensors(sglang_source: SGLangSource) -> None:
    grids = "image_grid_thw = torch.concat([item.image_grid_thw for item in items], dim=0)"
    pixels = "pixel_values = torch.cat([item.feature for item in items], dim=0).type(self.visual.dtype)"
    for module in ("sglang.srt.models.qwen2_vl", "sglang.srt.models.qwen2_5_vl"):
        feature = ast.unparse(_function(sglang_source, module, "get_image_feature"))
        assert grids in feature and pixels in feature, module
    qwen3 = "sglang.srt.models.qwen3_vl"
    assert grids in ast.unparse(_function(sglang_source, qwen3, "get_image_feature"))
    assert "proxy = item.feature" in ast.unparse(_function(sglang_source, qwen3, "_materialize_visual_items"))


def test_a_request_with_no_images_is_an_empty_list(sglang_source: SGLangSource) -> None:
    io = ast.unparse(_function(sglang_source, "sglang.srt.managers.io_struct", "_normalize_image_data"))
    assert "if len(self.image_data) > 0 and isinstance(self.image_data[0], list):" in io
    valid = ast.unparse(_function(sglang_source, "sglang.srt.multimodal.mm_utils", "has_valid_data"))
    assert "return any((has_valid_data(item) for item in flatten_nested_list(data)))" in valid


def _entry_classes(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "EntryClass" for t in node.targets
        ):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            return {ast.unparse(value) for value in values}
    return set()


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_shutting_an_engine_down_kills_every_child_of_its_process(sglang_source: SGLangSource) -> None:
    # So `SGLangEngine` refuses a second engine in one process: each engine lives in an actor of its own.
    shutdown = ast.unparse(sglang_source.methods("sglang.srt.entrypoints.engine", "Engine")["shutdown"])
    assert "kill_process_tree(os.getpid(), include_parent=False" in shutdown
