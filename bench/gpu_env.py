"""Make the repository importable as `kubedistill` on a machine where it cannot be pip-installed (the lent
GPU machine: no network, no virtual environment): a folder `.gpu/` with `kubedistill/{api,operator,runtime}`
and `bench` linked to the top-level folders, and a `.dist-info` carrying this project's entry points, through
which the losses and algorithms are found by name. The repository root itself stays off the path: its
operator/ folder would shadow the standard library's `operator`. Uses the standard library only.

    python3 bench/gpu_env.py && PYTHONPATH=.gpu python3 -P -m bench.gpu_check
"""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".gpu"


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    package = TARGET / "kubedistill"
    package.mkdir(parents=True, exist_ok=True)
    links = {package / name: ROOT / name for name in ("api", "operator", "runtime")}
    links[TARGET / "bench"] = ROOT / "bench"
    for link, source in links.items():
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
    info = TARGET / f"kubedistill-{project['version']}.dist-info"
    info.mkdir(exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: kubedistill\nVersion: {project['version']}\n"
    (info / "METADATA").write_text(metadata)
    groups = project.get("entry-points", {})
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    print(f"kubedistill importable from {TARGET}")


if __name__ == "__main__":
    main()
