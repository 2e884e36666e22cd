"""How fast the operator takes on new jobs, and how many API requests each one costs.

    .venv/bin/python -m bench.operator [--jobs 10 100] [--idle 3]

The real operator (kopf, in a thread) against the emulated API server the operator tests use. For each
count, that many DistillationJobs are created at once; the clock runs from the first create until every
job's RayJob exists, every job's status reports Created, and kopf has recorded every job as handled.
Requests are the operator's own (kopf and its client), counted from the server's log; the goal is a
constant number per job, independent of the number of jobs (no listing or polling per job). Afterwards
the operator idles for `--idle` seconds with nothing changing: it should make no requests at all
(watches stay open; a pending job has no timers).
"""

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import kmock

from bench.report import report
from tests.operator.apiserver import ArchivingApiServer
from tests.operator.harness import Cluster, declare_resources, eventually, job_manifest, running_operator
from tests.operator.rbac_audit import operator_accesses


async def measure(jobs: int, idle_seconds: float) -> dict[str, Any]:
    async with ArchivingApiServer() as server, kmock.Server(server):
        declare_resources(server)
        cluster = Cluster(server)
        async with running_operator(server):
            log = server.archive
            names = [f"job-{index:04d}" for index in range(jobs)]
            start, served = time.perf_counter(), len(log)
            await asyncio.gather(*(cluster.create_job(job_manifest(name)) for name in names))
            await eventually(
                lambda: all(_settled(cluster, name) for name in names),
                timeout=600,
                interval=0.1,
                what="every job created and handled",
            )
            elapsed = time.perf_counter() - start
            accesses = operator_accesses(log[served:])
            served = len(log)
            await asyncio.sleep(idle_seconds)
            idle = len(operator_accesses(log[served:]))
    by_kind = Counter(f"{access.verb} {access.resource}" for access in accesses)
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs/s": jobs / elapsed,
        "requests/job": len(accesses) / jobs,
        "creates/job": (by_kind["create configmaps"] + by_kind["create rayjobs"]) / jobs,
        "status patches/job": by_kind["patch distillationjobs/status"] / jobs,
        "kopf patches/job": by_kind["patch distillationjobs"] / jobs,
        "lists+watches": sum(n for kind, n in by_kind.items() if kind.split()[0] in ("list", "watch")),
        "idle requests": idle,
    }


def _settled(cluster: Cluster, name: str) -> bool:
    """The RayJob exists, the status says Created, and kopf has recorded the job as handled."""
    job = cluster.job(name) or {}
    conditions = (job.get("status") or {}).get("conditions", [])
    created = any(c["type"] == "Created" and c["status"] == "True" for c in conditions)
    handled = "kubedistill.io/last-handled-configuration" in job.get("metadata", {}).get("annotations", {})
    return created and handled and cluster.rayjob(name) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds of idling after the jobs are created"
    )
    args = parser.parse_args()
    rows = [asyncio.run(measure(jobs, args.idle)) for jobs in args.jobs]
    report(
        "operator",
        "Operator: jobs created against an emulated API server (1 operator, 2 CPU cores shared)",
        rows,
        {"jobs": args.jobs, "idle_seconds": args.idle},
    )


if __name__ == "__main__":
    main()
