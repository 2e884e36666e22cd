"""`make bench`: every benchmark in turn, each in its own process (each prints a table and writes
bench/results/<name>.json). Run from the repository root.

    .venv/bin/python -m bench [name ...]
"""

import subprocess
import sys

BENCHMARKS = ("transfer", "loss", "step", "operator", "vs_trl")


def main() -> int:
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = [
        name
        for name in chosen
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode
    ]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
