"""The DistillationJobs the rendering tests run on: every example in the repository and the golden cases."""

from pathlib import Path
from typing import Any

from kubedistill.api.job import DistillationJob, parse_job
from kubedistill.api.manifest import load_jobs

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_IMAGE = "registry.test/kubedistill-runtime:golden"


def example_jobs() -> list[tuple[str, DistillationJob]]:
    """Every DistillationJob under examples/ (other kinds in those files are skipped)."""
    return [
        (f"{path.relative_to(ROOT)}:{job.name}", job)
        for path in sorted((ROOT / "examples").glob("**/*.yaml"))
        if _has_jobs(path)
        for job in load_jobs(path, check_plugin_names=False)
    ]


def golden_cases() -> list[Path]:
    return sorted(path for path in GOLDEN.iterdir() if (path / "job.yaml").is_file())


def golden_job(case: Path) -> DistillationJob:
    (job,) = load_jobs(case / "job.yaml", check_plugin_names=False)
    return job


def _has_jobs(path: Path) -> bool:
    return "kind: DistillationJob" in path.read_text(encoding="utf-8")


def small_job(spec: dict[str, Any]) -> DistillationJob:
    """Job `ml/demo` with a minimal off-policy spec, these top-level spec fields replaced."""
    base = {
        "teacher": {"model": "t"},
        "student": {"model": "s"},
        "data": {"train": {"path": "/data/t.jsonl"}},
    }
    manifest = {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "demo", "namespace": "ml"},
        "spec": {**base, **spec},
    }
    return parse_job(manifest, check_plugin_names=False)
