"""Every class, method, keyword and import path our SGLang code uses exists under that name in the pinned
release's source (parsed from its wheel, never imported), and our code reaches SGLang only through what is
checked here. SGLang needs a GPU, so this is how the cluster image's code is checked on CPU machines."""

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from kubedistill.api.spec import Precision, Quantization, RolloutSpec, TeacherSpec
from kubedistill.runtime.engines.layout import EnginePlacement
from kubedistill.runtime.engines.sglang.args import (
    engine_environment,
    rollout_engine_args,
    teacher_engine_args,
)
from kubedistill.runtime.engines.sglang.engine import ALL_MEMORY
from tests.runtime.engines.sglang.our_usage import (
    ARGS_MODULE,
    BACKEND_MODULES,
    ENGINE_MODULE,
    IMAGE_DATA_BUILDERS,
    SAMPLING_PARAM_BUILDERS,
    SAMPLING_PARAMS,
    SERVER_ARG_BUILDERS,
    all_problems,
    called_name,
    calls_of,
    engine_call_problems,
    engine_calls,
    image_item_problems,
    literal_keys,
    method_calls,
    origins,
    parse,
    runtime_files,
    sglang_imports,
    sglang_users,
    stray_engine_uses,
    unknown_keys,
)
from tests.runtime.engines.sglang.wheel_source import SGLangSource, pinned_sglang_version

ENGINE_SURFACE = {
    "generate",
    "begin_weight_update",
    "end_weight_update",
    "update_weights_from_tensor",
    "init_weights_update_group",
    "update_weights_from_distributed",
    "flush_cache",
    "release_memory_occupation",
    "resume_memory_occupation",
    "shutdown",
}


def test_our_sglang_usage_matches_the_pinned_release(sglang_source: SGLangSource) -> None:
    assert all_problems(sglang_source) == []


def test_only_the_engine_module_imports_sglang() -> None:
    importers = [path for path in runtime_files() if sglang_imports(parse(path))]
    assert importers == [ENGINE_MODULE]


def test_the_engine_surface_we_depend_on_is_these_methods(sglang_source: SGLangSource) -> None:
    calls = engine_calls(parse(ENGINE_MODULE))
    assert {call.func.attr for call in calls if isinstance(call.func, ast.Attribute)} == ENGINE_SURFACE
    assert engine_call_problems(calls, sglang_source) == []


def test_the_engine_object_is_touched_only_by_checked_method_calls() -> None:
    users = sglang_users()
    assert {*BACKEND_MODULES, ENGINE_MODULE} <= set(users)
    strays = {path: stray_engine_uses(parse(path), holds_engine=path == ENGINE_MODULE) for path in users}
    assert strays == {path: [] for path in users}


def test_engines_are_built_only_from_checked_server_args() -> None:
    (construction,) = calls_of(parse(ENGINE_MODULE), "Engine")
    assert not construction.args
    assert [ast.unparse(keyword) for keyword in construction.keywords] == ["**server_args"]
    constructions = [
        (tree, call) for tree in map(parse, runtime_files()) for call in calls_of(tree, "SGLangEngine")
    ]
    assert {origin for tree, call in constructions for origin in origins(tree, call.args[0])} == set(
        SERVER_ARG_BUILDERS
    )
    assert {called_name(call.args[1]) for _, call in constructions} == {"engine_environment"}


def test_every_request_carries_checked_sampling_params() -> None:
    calls = [call for path in BACKEND_MODULES for call in method_calls(parse(path), "_sglang", "generate")]
    passed = [
        keyword.value for call in calls for keyword in call.keywords if keyword.arg == "sampling_params"
    ]
    assert len(calls) == len(BACKEND_MODULES)
    assert {called_name(value) for value in passed} == set(SAMPLING_PARAM_BUILDERS)


def test_images_reach_sglang_only_from_the_checked_image_data_builders() -> None:
    calls = [call for path in BACKEND_MODULES for call in method_calls(parse(path), "_sglang", "generate")]
    passed = [keyword.value for call in calls for keyword in call.keywords if keyword.arg == "image_data"]
    assert len(passed) == len(calls)
    found = {
        origin
        for path in BACKEND_MODULES
        for call in method_calls(parse(path), "_sglang", "generate")
        for keyword in call.keywords
        if keyword.arg == "image_data"
        for origin in origins(parse(path), keyword.value)
    }
    assert found == set(IMAGE_DATA_BUILDERS)
    (forwarded,) = [
        keyword.value
        for call in engine_calls(parse(ENGINE_MODULE))
        if isinstance(call.func, ast.Attribute) and call.func.attr == "generate"
        for keyword in call.keywords
        if keyword.arg == "image_data"
    ]
    assert ast.unparse(forwarded) == "image_data"


def test_our_image_item_is_a_processor_output_sglang_reads(sglang_source: SGLangSource) -> None:
    assert image_item_problems(parse(ARGS_MODULE), sglang_source) == []


@pytest.mark.parametrize(
    ("item", "caught"),
    [
        (
            '{"format": PROCESSOR_OUTPUT, "pixel_value": p, "image_grid_thw": g}',
            "image keys has no pixel_value",
        ),
        ('{"format": PROCESSOR_OUTPUT, "pixel_values": p, "video_grid_thw": g}', "has no video_grid_thw"),
        ('{"pixel_values": p, "image_grid_thw": g}', "needs a format key"),
        ('{"format": PROCESSOR_OUTPUT, "image_grid_thw": g}', "none of the feature keys"),
        ('{"format": "processor_output", "pixel_values": p}', "format must be PROCESSOR_OUTPUT"),
    ],
)
def test_a_wrong_image_item_of_ours_fails_the_check(
    item: str, caught: str, sglang_source: SGLangSource
) -> None:
    args = ast.parse(
        f'PROCESSOR_OUTPUT = "processor_output"\ndef _processor_output(inputs):\n    return {item}\n'
    )
    problems = image_item_problems(args, sglang_source)
    assert any(caught in problem for problem in problems), problems


def test_a_format_sglang_does_not_take_fails_the_check(sglang_source: SGLangSource) -> None:
    args = ast.parse(
        'PROCESSOR_OUTPUT = "hf_output"\n'
        "def _processor_output(inputs):\n"
        '    return {"format": PROCESSOR_OUTPUT, "pixel_values": p, "image_grid_thw": g}\n'
    )
    assert any("no format 'hf_output'" in problem for problem in image_item_problems(args, sglang_source))


@pytest.mark.parametrize("builder", SERVER_ARG_BUILDERS)
def test_engine_args_are_server_args_fields(builder: str, sglang_source: SGLangSource) -> None:
    keys = literal_keys(parse(ARGS_MODULE), builder)
    assert unknown_keys(keys, set(sglang_source.server_args_fields()), "ServerArgs") == []


@pytest.mark.parametrize("builder", SAMPLING_PARAM_BUILDERS)
def test_sampling_params_are_sampling_params_fields(builder: str, sglang_source: SGLangSource) -> None:
    keys = literal_keys(parse(ARGS_MODULE), builder)
    assert unknown_keys(keys, set(sglang_source.class_fields(*SAMPLING_PARAMS)), "SamplingParams") == []


MULTI_NODE = EnginePlacement(nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:20000")
ENGINE_ARG_VARIANTS: list[Callable[[], dict[str, Any]]] = [
    lambda: teacher_engine_args(
        TeacherSpec(), "m", EnginePlacement(), colocate=False, precision=Precision.BF16, seed=7
    ),
    lambda: teacher_engine_args(
        TeacherSpec(
            tensor_parallel=2,
            pipeline_parallel=2,
            expert_parallel=2,
            gpus_per_replica=8,
            quantization=Quantization.FP8,
        ),
        "m",
        EnginePlacement(base_gpu_id=0),
        colocate=True,
        precision=Precision.FP32,
    ),
    lambda: teacher_engine_args(
        TeacherSpec(tensor_parallel=16, gpus_per_replica=16, nodes_per_replica=2),
        "m",
        MULTI_NODE,
        colocate=False,
        precision=Precision.BF16,
    ),
    lambda: rollout_engine_args(
        RolloutSpec(), "m", EnginePlacement(), colocate=False, precision=Precision.BF16, seed=7
    ),
    lambda: rollout_engine_args(
        RolloutSpec(tensor_parallel=4),
        "m",
        EnginePlacement(base_gpu_id=4),
        colocate=True,
        precision=Precision.FP32,
        seed=0,
    ),
]

DECLARED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "str": (str,),
    "Optional[int]": (int, type(None)),
    "Optional[float]": (int, float, type(None)),
    "Optional[str]": (str, type(None)),
    "Optional[Literal['full', 'breakable', 'disabled']]": (str, type(None)),
}


def _declared_type(annotation: ast.expr) -> str:
    inner = (
        annotation.slice.elts[0]
        if isinstance(annotation, ast.Subscript) and isinstance(annotation.slice, ast.Tuple)
        else annotation
    )
    return ast.unparse(inner)


@pytest.mark.parametrize("build", ENGINE_ARG_VARIANTS)
def test_engine_arg_values_fit_the_declared_types_and_choices(
    build: Callable[[], dict[str, Any]], sglang_source: SGLangSource
) -> None:
    fields = sglang_source.server_args_fields()
    for key, value in build().items():
        module, annotation = fields[key]
        declared = _declared_type(annotation)
        assert isinstance(value, DECLARED_TYPES[declared]), f"{key}={value!r} is not {declared}"
        literal = [
            node.value
            for node in ast.walk(annotation)
            if isinstance(node, ast.Constant) and "Literal[" in declared and isinstance(node.value, str)
        ]
        # A Literal names its choices itself (its `choices=` may be an attribute we cannot resolve).
        choices = literal or sglang_source.choices(module, annotation)
        if choices is not None and value is not None:
            assert value in choices, f"{key}={value!r} is not one of {choices}"


@pytest.mark.parametrize("builder", SERVER_ARG_BUILDERS)
def test_the_static_key_check_sees_every_key_a_builder_returns(builder: str) -> None:
    returned = {key for build in ENGINE_ARG_VARIANTS for key in build()}
    assert literal_keys(parse(ARGS_MODULE), builder) <= returned


def test_our_memory_tags_are_sglangs(sglang_source: SGLangSource) -> None:
    assert set(ALL_MEMORY) == set(
        sglang_source.strings("sglang.srt.constants", ast.Name("GPU_MEMORY_ALL_TYPES"))
    )


ENVIRONMENT_READERS = {
    "SGLANG_BLOCK_NONZERO_RANK_CHILDREN": "sglang.srt.entrypoints.engine",
    "NCCL_CUMEM_ENABLE": "sglang.srt.entrypoints.engine",
    "SGLANG_MEMORY_SAVER_CUDA_GRAPH": "sglang.srt.model_executor.runner_backend.full_cuda_graph_backend",
    "SGLANG_USE_CPU_ENGINE": "sglang.srt.utils.common",
}


def test_the_environment_we_set_is_read_by_the_engine(sglang_source: SGLangSource) -> None:
    set_by_us = {
        variable
        for placement in (EnginePlacement(), EnginePlacement(device="cpu"))
        for colocate in (True, False)
        for variable in engine_environment(placement, colocate=colocate)
    }
    assert set_by_us == set(ENVIRONMENT_READERS)
    for variable, module in ENVIRONMENT_READERS.items():
        assert variable in _environment_reads(sglang_source.tree(module)), (variable, module)


def _environment_reads(tree: ast.Module) -> set[str]:
    """Variables a module reads: `os.getenv("X")`, `os.environ.get("X")`, `get_bool_env_var("X")`, and
    `"X" in os.environ`."""
    readers = ("os.getenv", "os.environ.get", "get_bool_env_var")
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in readers and node.args:
            first = node.args[0]
        elif isinstance(node, ast.Compare) and ast.unparse(node.comparators[0]) == "os.environ":
            first = node.left
        else:
            continue
        if isinstance(first, ast.Constant):
            read.add(first.value)
    return read


@dataclass(frozen=True)
class Rename:
    path: str
    old: str
    new: str
    caught: str


SGLANG_RENAMES = [
    Rename(
        "sglang/srt/entrypoints/engine.py",
        '        flush_cache: bool = True,\n    ):\n        """Update weights from distributed source. If',
        '        flush_kv_cache: bool = True,\n    ):\n        """Update weights from distributed source. If',
        "Engine.update_weights_from_tensor has no parameter flush_cache",
    ),
    Rename(
        "sglang/srt/entrypoints/engine.py",
        "def init_weights_update_group(",
        "def init_weight_update_group(",
        "Engine has no method init_weights_update_group",
    ),
    Rename(
        # The abstract base's method, without `tags`, then answers for it.
        "sglang/srt/entrypoints/engine.py",
        "def release_memory_occupation(",
        "def release_memory(",
        "Engine.release_memory_occupation has no parameter tags",
    ),
    Rename(
        "sglang/srt/arg_groups/fields/schedule.py",
        "    chunked_prefill_size: A[",
        "    chunked_prefill_tokens: A[",
        "teacher_engine_args: ServerArgs has no chunked_prefill_size",
    ),
    Rename(
        "sglang/srt/sampling/sampling_params.py",
        "    top_p: float = 1.0\n",
        "    nucleus_p: float = 1.0\n",
        "rollout_sampling_params: SamplingParams has no top_p",
    ),
    Rename(
        "sglang/srt/multimodal/processors/base_processor.py",
        '            "processor_output",\n        ):',
        '            "hf_processor_output",\n        ):',
        "_processor_output: SGLang's processor output: no format 'processor_output'",
    ),
    Rename(
        "sglang/srt/multimodal/processors/base_processor.py",
        '            "image_grid_thw": Modality.IMAGE,',
        '            "image_grid": Modality.IMAGE,',
        "_processor_output: SGLang's processor output image keys has no image_grid_thw",
    ),
    Rename(
        "sglang/srt/multimodal/processors/base_processor.py",
        '            "pixel_values",\n            "pixel_values_videos",',
        '            "pixel_values_videos",',
        "_processor_output: SGLang's processor output has none of the feature keys",
    ),
    Rename(
        "sglang/srt/utils/common.py",
        "def init_custom_process_group(",
        "def init_process_group_for_updates(",
        "sglang.srt.utils.common has no init_custom_process_group",
    ),
]


@pytest.mark.parametrize("rename", SGLANG_RENAMES, ids=lambda r: r.caught)
def test_a_name_changed_in_sglang_fails_the_check(rename: Rename, sglang_source: SGLangSource) -> None:
    changed = sglang_source.edited(rename.path, rename.old, rename.new)
    assert any(rename.caught in problem for problem in all_problems(changed))


OUR_MISTAKES = [
    ("self._engine.update_weights_from_tensor(named_tensor=x)", "has no parameter named_tensor"),
    ("self._engine.update_weight_from_tensor(named_tensors=x)", "no method update_weight_from_tensor"),
    ("self._engine.release_memory_occupation(tag=['weights'])", "has no parameter tag"),
    ("self._engine.generate(**request)", "called with * or ** arguments"),
    ("self._engine.flush_cache(True)", "takes 0 positional arguments"),
]


@pytest.mark.parametrize(("code", "caught"), OUR_MISTAKES)
def test_a_wrong_engine_call_of_ours_fails_the_check(
    code: str, caught: str, sglang_source: SGLangSource
) -> None:
    problems = engine_call_problems(engine_calls(ast.parse(code)), sglang_source)
    assert any(caught in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("wrong", "right", "fields"),
    [
        ("tensor_parallel_size", "tp_size", "server"),
        ("max_tokens", "max_new_tokens", "sampling"),
        ("seed", "temperature", "sampling"),
    ],
)
def test_a_wrong_key_of_ours_fails_the_check(
    wrong: str, right: str, fields: str, sglang_source: SGLangSource
) -> None:
    builder = ast.parse(f"def build():\n    return {{{wrong!r}: 1, {right!r}: 1}}\n")
    known = (
        set(sglang_source.server_args_fields())
        if fields == "server"
        else set(sglang_source.class_fields(*SAMPLING_PARAMS))
    )
    assert unknown_keys(literal_keys(builder, "build"), known, "fields") == [f"fields has no {wrong}"]


def test_a_computed_key_cannot_slip_past_the_check() -> None:
    builder = ast.parse("def build(name):\n    return {name: 1}\n")
    with pytest.raises(ValueError, match="not a string literal"):
        literal_keys(builder, "build")


def test_the_checked_source_is_the_release_pinned_in_pyproject(sglang_source: SGLangSource) -> None:
    assert pinned_sglang_version() in sglang_source.string_constants("sglang._version")
