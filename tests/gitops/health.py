"""The Argo CD health check of DistillationJobs (examples/gitops/argocd-cm.yaml), run in Lua 5.1 as Argo
CD's gopher-lua runs it: the object in the global `obj`, a table {status, message} returned."""

import functools
from pathlib import Path
from typing import Any

import yaml
from lupa.lua51 import LuaRuntime

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_CM = ROOT / "examples" / "gitops" / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.kubedistill.io_DistillationJob"


@functools.cache
def health_script() -> str:
    config_map = yaml.safe_load(ARGOCD_CM.read_text(encoding="utf-8"))
    return config_map["data"][HEALTH_KEY]


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_script())
    return result["status"], result["message"]
