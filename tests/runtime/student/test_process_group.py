"""The student's default process group: CPU tensors have a backend on the GPU path too.

A CUDA machine is not needed to see the GPU path's choice: `process_group_backend("cuda")` is the string the
worker passes to `init_process_group` there, and torch's own parser says which backend serves each device.
"""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.distributed_c10d import BackendConfig
from torch.distributed.tensor import Shard, distribute_tensor

from kubedistill.runtime.student.parallelize import process_group_backend
from kubedistill.runtime.student.worker import all_ranks_agree


def test_the_gpu_group_runs_cpu_collectives_on_gloo_and_cuda_ones_on_nccl() -> None:
    # NCCL alone maps only "cuda": the loss sums and all_ranks_agree (CPU tensors) would have no backend.
    assert BackendConfig(process_group_backend("cuda")).get_device_backend_map() == {
        "cpu": "gloo",
        "cuda": "nccl",
    }


def test_the_cpu_group_uses_the_same_cpu_backend_as_the_gpu_group() -> None:
    cpu_map = BackendConfig(process_group_backend("cpu")).get_device_backend_map()
    gpu_map = BackendConfig(process_group_backend("cuda")).get_device_backend_map()
    assert cpu_map == {"cpu": gpu_map["cpu"]}


@pytest.fixture
def student_process_group() -> object:
    dist.init_process_group(process_group_backend("cpu"), store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("student_process_group")
def test_the_steps_cpu_collectives_run_on_the_student_group() -> None:
    assert dist.get_backend_config() == "cpu:gloo"
    sums = torch.tensor([1.5, 2.5, 3.0, 4.0], dtype=torch.float64)
    dist.all_reduce(sums)
    assert sums.tolist() == [1.5, 2.5, 3.0, 4.0]
    assert all_ranks_agree(True)
    assert not all_ranks_agree(False)


@pytest.mark.usefixtures("student_process_group")
def test_a_cpu_shard_is_gathered_whole_as_under_cpu_offload() -> None:
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
    whole = torch.arange(12.0).reshape(4, 3)
    shard = distribute_tensor(whole, mesh, [Shard(0)])
    assert torch.equal(shard.full_tensor(), whole)
