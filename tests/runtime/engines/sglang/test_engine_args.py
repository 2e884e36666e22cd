"""How the spec and the placement become SGLang engine arguments."""

import pytest

from kubedistill.api.job import SpecError
from kubedistill.api.spec import Attention, Precision, RolloutSpec, TeacherSpec
from kubedistill.runtime.engines.layout import EnginePlacement, single_node_placement
from kubedistill.runtime.engines.sglang.args import (
    BLOCK_NONZERO_RANK_CHILDREN,
    MEMORY_SAVER_CUDA_GRAPH,
    NCCL_ENVIRONMENT,
    USE_CPU_ENGINE,
    engine_environment,
    refuse_unusable_hidden_states,
    rollout_engine_args,
    teacher_engine_args,
    teacher_weight_update_refusal,
)

TWO_NODES = EnginePlacement(nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:20000")
DEFAULT_TEACHER = TeacherSpec()
ONE_NODE = EnginePlacement()


def _teacher(
    spec: TeacherSpec = DEFAULT_TEACHER, placement: EnginePlacement = ONE_NODE, **options: object
) -> dict:
    chosen = {"colocate": False, "precision": Precision.BF16, **options}
    return teacher_engine_args(spec, "/models/teacher", placement, **chosen)


def _rollout(**options: object) -> dict:
    chosen = {"colocate": False, "precision": Precision.BF16, "seed": 0, **options}
    return rollout_engine_args(RolloutSpec(), "m", ONE_NODE, **chosen)


def test_the_teacher_prefills_whole_sequences_of_token_ids_and_returns_hidden_states() -> None:
    args = _teacher()
    assert args["model_path"] == "/models/teacher"
    assert args["skip_tokenizer_init"] is True
    assert args["enable_return_hidden_states"] is True
    assert args["chunked_prefill_size"] == -1
    assert args["disable_radix_cache"] is True


@pytest.mark.parametrize(
    ("tensor", "pipeline", "gpus", "data"),
    [(1, 1, 1, 1), (8, 1, 8, 1), (2, 1, 8, 4), (2, 2, 8, 2), (4, 2, 8, 1)],
)
def test_gpus_beyond_one_model_copy_become_data_parallel_replicas(
    tensor: int, pipeline: int, gpus: int, data: int
) -> None:
    args = _teacher(TeacherSpec(tensor_parallel=tensor, pipeline_parallel=pipeline, gpus_per_replica=gpus))
    assert (args["tp_size"], args["pp_size"], args["dp_size"]) == (tensor, pipeline, data)


def test_expert_parallelism_memory_and_quantization_come_from_the_spec() -> None:
    spec = TeacherSpec(
        tensor_parallel=8, expert_parallel=4, gpus_per_replica=8, mem_fraction_static=0.55, quantization="fp8"
    )
    args = _teacher(spec)
    assert (args["ep_size"], args["mem_fraction_static"], args["quantization"]) == (4, 0.55, "fp8")
    assert _teacher()["quantization"] is None


@pytest.mark.parametrize(("precision", "dtype"), [(Precision.BF16, "bfloat16"), (Precision.FP32, "float32")])
def test_training_precision_sets_the_engine_dtype(precision: Precision, dtype: str) -> None:
    assert _teacher(precision=precision)["dtype"] == _rollout(precision=precision)["dtype"] == dtype


@pytest.mark.parametrize("colocate", [True, False])
def test_only_colocated_engines_can_release_their_memory_and_keep_weights_on_the_cpu(colocate: bool) -> None:
    for args in (_teacher(colocate=colocate), _rollout(colocate=colocate)):
        assert (args["enable_memory_saver"], args["enable_weights_cpu_backup"]) == (colocate, colocate)


def test_a_teacher_spanning_nodes_gets_its_node_rank_and_rendezvous_address() -> None:
    spec = TeacherSpec(tensor_parallel=16, gpus_per_replica=16, nodes_per_replica=2)
    args = _teacher(spec, TWO_NODES)
    assert (args["nnodes"], args["node_rank"], args["dist_init_addr"]) == (2, 1, "10.0.0.1:20000")
    assert not TWO_NODES.serves_requests
    assert engine_environment(TWO_NODES, colocate=False)[BLOCK_NONZERO_RANK_CHILDREN] == "0"


def test_an_engine_starts_at_the_gpu_its_placement_names() -> None:
    assert _teacher(placement=EnginePlacement(base_gpu_id=4))["base_gpu_id"] == 4
    assert single_node_placement() == EnginePlacement()
    assert single_node_placement().serves_requests


@pytest.mark.parametrize(
    ("spec", "placement", "message"),
    [
        (
            TeacherSpec(tensor_parallel=2, gpus_per_replica=8, nodes_per_replica=2),
            EnginePlacement(nnodes=2, dist_init_addr="h:1"),
            "spec.teacher.gpusPerReplica",
        ),
        (TeacherSpec(), TWO_NODES, "spec.teacher.nodesPerReplica is 1"),
    ],
)
def test_a_teacher_sglang_cannot_place_is_refused_naming_the_field(
    spec: TeacherSpec, placement: EnginePlacement, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _teacher(spec, placement)


def test_a_rollout_engine_on_several_nodes_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.rollout\.tensorParallel"):
        rollout_engine_args(RolloutSpec(), "m", TWO_NODES, colocate=False, precision=Precision.BF16, seed=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_gpu_id": -1}, "base_gpu_id"),
        ({"nnodes": 2, "node_rank": 2, "dist_init_addr": "h:1"}, "node_rank 2"),
        ({"nnodes": 2, "node_rank": 0}, "dist_init_addr"),
    ],
)
def test_an_impossible_placement_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnginePlacement(**fields)


def test_a_teacher_writing_responses_samples_from_its_seed_as_a_rollout_engine_does() -> None:
    assert _teacher(seed=1234)["random_seed"] == _rollout(seed=1234)["random_seed"] == 1234
    assert _teacher()["random_seed"] is None, "one that only scores leaves SGLang to draw a seed"


def test_the_rollout_samples_with_the_job_seed_and_keeps_its_prefix_cache() -> None:
    args = rollout_engine_args(
        RolloutSpec(tensor_parallel=2, mem_fraction_static=0.5),
        "/models/student",
        EnginePlacement(base_gpu_id=2),
        colocate=False,
        precision=Precision.BF16,
        seed=1234,
    )
    assert (args["tp_size"], args["mem_fraction_static"], args["random_seed"]) == (2, 0.5, 1234)
    assert (args["model_path"], args["base_gpu_id"], args["skip_tokenizer_init"]) == (
        "/models/student",
        2,
        True,
    )
    assert "disable_radix_cache" not in args and "enable_return_hidden_states" not in args


@pytest.mark.parametrize(
    ("spec", "placement", "field"),
    [
        (
            TeacherSpec(tensor_parallel=2, gpus_per_replica=4),
            EnginePlacement(),
            "spec.teacher.gpusPerReplica",
        ),
        (
            TeacherSpec(tensor_parallel=16, gpus_per_replica=16, nodes_per_replica=2),
            TWO_NODES,
            "spec.teacher.nodesPerReplica",
        ),
    ],
)
def test_a_teacher_that_cannot_take_new_weights_says_which_field_to_change(
    spec: TeacherSpec, placement: EnginePlacement, field: str
) -> None:
    refusal = teacher_weight_update_refusal(_teacher(spec, placement))
    assert refusal is not None and field in refusal


def test_a_one_node_teacher_without_data_parallelism_takes_new_weights() -> None:
    assert teacher_weight_update_refusal(_teacher(TeacherSpec(tensor_parallel=4, gpus_per_replica=4))) is None


def test_a_teacher_whose_hidden_states_are_pre_norm_is_refused_naming_the_backend_field() -> None:
    with pytest.raises(
        ValueError, match=r"spec.teacher.backend: .*Step3p5ForCausalLM.*use backend transformers"
    ):
        refuse_unusable_hidden_states(["Step3p5ForCausalLM"], "/models/step")
    refuse_unusable_hidden_states(["Qwen3ForCausalLM"], "/models/qwen")


@pytest.mark.parametrize("colocate", [True, False])
def test_colocated_engines_capture_graphs_where_sleeping_frees_them(colocate: bool) -> None:
    # The cuda_graph tag frees graphs captured in the memory saver's region only, and the breakable prefill
    # graph refuses that region: colocated engines turn it on and the prefill graph off (sglang_facts).
    for args in (_teacher(colocate=colocate), _rollout(colocate=colocate)):
        assert args["cuda_graph_backend_prefill"] == ("disabled" if colocate else None)
        assert "cuda_graph_backend_decode" not in args
    assert (engine_environment(ONE_NODE, colocate=colocate).get(MEMORY_SAVER_CUDA_GRAPH) == "1") is colocate


@pytest.mark.parametrize("colocate", [True, False])
def test_engines_start_with_nccl_cumem_off_like_the_student_rank_that_joins_them(colocate: bool) -> None:
    from kubedistill.runtime.cluster.placement import ClusterView
    from kubedistill.runtime.student.group import student_actor_options

    engine = engine_environment(ONE_NODE, colocate=colocate)
    student = student_actor_options(ClusterView(gpus=8.0, resources=frozenset()))["runtime_env"]["env_vars"]
    assert {name: student[name] for name in NCCL_ENVIRONMENT} == {
        name: engine[name] for name in NCCL_ENVIRONMENT
    }
    assert NCCL_ENVIRONMENT == {"NCCL_CUMEM_ENABLE": "0"}


def test_a_rank_without_gpus_asks_for_no_runtime_environment_so_it_takes_a_prestarted_worker() -> None:
    from kubedistill.runtime.cluster.placement import ClusterView
    from kubedistill.runtime.student.group import student_actor_options

    assert "runtime_env" not in student_actor_options(ClusterView(gpus=0.0, resources=frozenset()))


def test_an_engine_placed_on_gpus_gets_no_cpu_switch_so_it_cannot_quietly_run_on_the_cpu() -> None:
    # Production defaults: a GPU placement names its device and leaves SGLang's CPU switch unset.
    for colocate in (True, False):
        assert USE_CPU_ENGINE not in engine_environment(ONE_NODE, colocate=colocate)
    assert _teacher()["device"] == "cuda"
    assert _rollout()["device"] == "cuda"


def test_an_engine_placed_on_a_node_without_gpus_runs_sglangs_cpu_engine() -> None:
    cpu = single_node_placement("cpu")
    assert engine_environment(cpu, colocate=False)[USE_CPU_ENGINE] == "1"
    assert _teacher(placement=cpu)["device"] == "cpu"
    assert (
        rollout_engine_args(RolloutSpec(), "m", cpu, colocate=False, precision=Precision.BF16, seed=0)[
            "device"
        ]
        == "cpu"
    )


def test_on_the_cpu_colocation_asks_for_no_memory_saver_which_is_cuda_only() -> None:
    cpu = single_node_placement("cpu")
    args = _teacher(placement=cpu, colocate=True)
    assert (args["enable_memory_saver"], args["enable_weights_cpu_backup"]) == (False, False)
    assert MEMORY_SAVER_CUDA_GRAPH not in engine_environment(cpu, colocate=True)


def test_an_idle_engine_sleeps_on_the_cpu_and_polls_as_sglang_does_on_gpus() -> None:
    assert _teacher(placement=single_node_placement("cpu"))["sleep_on_idle"] is True
    assert _teacher()["sleep_on_idle"] is False
    assert _rollout()["sleep_on_idle"] is False


def test_on_the_cpu_the_kv_cache_is_bounded_in_tokens_not_a_share_of_the_machines_ram() -> None:
    from kubedistill.runtime.engines.sglang.args import CPU_KV_CACHE_TOKENS

    assert _teacher(placement=single_node_placement("cpu"))["max_total_tokens"] == CPU_KV_CACHE_TOKENS
    assert _teacher()["max_total_tokens"] is None
    assert _rollout()["max_total_tokens"] is None


@pytest.mark.parametrize(
    ("attention", "backend"),
    [
        (Attention.SDPA, None),
        (Attention.FLASH_ATTENTION_3, "fa3"),
        (Attention.FLEX_ATTENTION, "flex_attention"),
    ],
)
def test_the_students_attention_kernel_becomes_sglangs_attention_backend_on_gpus(
    attention: Attention, backend: str | None
) -> None:
    gpu = EnginePlacement(device="cuda")
    assert _teacher(placement=gpu, attention=attention)["attention_backend"] == backend
    rollout = rollout_engine_args(
        RolloutSpec(), "m", gpu, colocate=False, precision=Precision.BF16, seed=0, attention=attention
    )
    assert rollout["attention_backend"] == backend


def test_an_engine_on_the_cpu_keeps_the_backend_sglangs_cpu_switch_picks() -> None:
    cpu = EnginePlacement(device="cpu")
    assert _teacher(placement=cpu, attention=Attention.FLASH_ATTENTION_3)["attention_backend"] is None


@pytest.mark.parametrize("attention", [Attention.FLASH_ATTENTION_2, Attention.EAGER])
def test_a_kernel_sglang_has_no_backend_for_is_refused_naming_the_field(attention: Attention) -> None:
    with pytest.raises(SpecError, match=r"^spec\.student\.attention: .* no SGLang counterpart"):
        _teacher(placement=EnginePlacement(device="cuda"), attention=attention)
