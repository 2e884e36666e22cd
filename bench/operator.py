"""How fast the operator takes on new jobs, and how many API requests each one costs.

    .venv/bin/python -m bench.operator [--jobs 10 100] [--idle 3] [--repeats 3]

The real operator (kopf, in a thread) against the emulated API server the operator tests use. For each
count, that many DistillationJobs are created at once; the clock runs from the first create until every
job's RayJob exists, every job's status reports Created, and kopf has recorded every job as handled.
Requests are the operator's own (kopf and its client), counted from the server's log; the goal is a
constant number per job, independent of the number of jobs (no listing or polling per job). Afterwards
the operator idles for `--idle` seconds with nothing changing: it should make no requests at all
(watches stay open; a pending job has no timers). Each count runs `--repeats` times, the counts in turn.

    .venv/bin/python -m bench.operator --running 1000 [--scrape-period 10] [--periods 3]

Then `--running` jobs are run at once, each with a trainer serving the page the runtime's `TrainerMetrics`
really serves (one loopback server serves them all, one registry per job), and the operator in a process of
its own, so that its memory is its own. Every bench trainer does one step per 10 ms, so a job's
`status.step` tells when its page was read: the status' age. Over `--periods` scrape periods the largest
age of any job's status must stay within two periods; the operator's resident memory and its API requests
per job and period are reported beside it.
"""

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
from prometheus_client import generate_latest

from bench.report import alternate, over_repeats, report
from kubedistill.api import telemetry
from kubedistill.runtime.trainer.metrics import TrainerMetrics
from tests.operator.apiserver import ArchivingApiServer
from tests.operator.harness import (
    Cluster,
    declare_resources,
    eventually,
    job_manifest,
    operator_process,
    running_operator,
)
from tests.operator.rbac_audit import operator_accesses


async def measure(jobs: int, idle_seconds: float) -> dict[str, Any]:
    async with ArchivingApiServer() as server, kmock.Server(server):
        declare_resources(server)
        cluster = Cluster(server)
        async with running_operator(server):
            log = server.archive
            names = [f"job-{index:04d}" for index in range(jobs)]
            start, served = time.perf_counter(), len(log)
            await asyncio.gather(*(cluster.create_job(_job_with_its_data(name)) for name in names))
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


WITH_RANGE = ("seconds", "jobs/s", "idle requests")
"""Columns shown with their range: the times follow the machine's load, and a request while idle (a status
patch landing after the jobs settled) is worth seeing in any run; the per-job counts are the median's."""


def _settled(cluster: Cluster, name: str) -> bool:
    """The RayJob exists, the status says Created, and kopf has recorded the job as handled."""
    job = cluster.job(name) or {}
    conditions = (job.get("status") or {}).get("conditions", [])
    created = any(c["type"] == "Created" and c["status"] == "True" for c in conditions)
    handled = "kubedistill.io/last-handled-configuration" in job.get("metadata", {}).get("annotations", {})
    return created and handled and cluster.rayjob(name) is not None


STEP_SECONDS = 0.01
"""Every bench trainer does one step per 10 ms: its step is its clock."""


class Trainers:
    """The trainers of every running job behind one loopback server: `/<namespace>/<job>/metrics` is the
    page that job's `TrainerMetrics` serves."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.metrics: dict[tuple[str, str], TrainerMetrics] = {}

    def step_now(self) -> int:
        return int((time.monotonic() - self.started) / STEP_SECONDS)

    async def page(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["job"])
        if key not in self.metrics:
            self.metrics[key] = TrainerMetrics(*key)
            self.metrics[key].set(telemetry.TOTAL_STEPS, 10**9)
        metrics = self.metrics[key]
        metrics.set(telemetry.STEP, self.step_now())
        metrics.set(telemetry.LOSS, 1.0)
        metrics.set(telemetry.LAST_STEP_SECONDS, STEP_SECONDS)
        metrics.observe(telemetry.STEP_SECONDS, STEP_SECONDS)
        return aiohttp.web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        app = aiohttp.web.Application()
        app.router.add_get("/{namespace}/{job}/metrics", self.page)
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield site._server.sockets[0].getsockname()[1]
        finally:
            await runner.cleanup()


CONCURRENT_CALLS = 32
"""Users and KubeRay at once: a thousand calls at one instant time out in the emulator, not the operator."""


async def _at_most(limit: int, calls: Iterable[Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def gated(call: Awaitable[None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(gated(call) for call in calls))


async def measure_running(jobs: int, period: float, periods: int) -> dict[str, Any]:
    trainers = Trainers()
    async with ArchivingApiServer() as server, kmock.Server(server), trainers.serving() as port:
        declare_resources(server)
        cluster = Cluster(server)
        settings = {
            "metrics_url_template": f"http://127.0.0.1:{port}/{{namespace}}/{{job}}/metrics",
            "scrape_period_seconds": period,
            "scrape_timeout_seconds": period / 2,
        }
        workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        async with operator_process(server, workdir, settings) as operator:
            names = [f"job-{index:04d}" for index in range(jobs)]
            start = time.perf_counter()
            await _at_most(CONCURRENT_CALLS, (cluster.create_job(_job_with_its_data(name)) for name in names))
            await eventually(
                lambda: all(cluster.condition("Created", name) for name in names),
                timeout=1200,
                interval=0.2,
                what="every job created",
            )
            created_seconds = time.perf_counter() - start
            # KubeRay starts every job's Ray cluster.
            await _at_most(
                CONCURRENT_CALLS,
                (
                    cluster.set_rayjob_status(
                        name, jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName=f"{name}-rc"
                    )
                    for name in names
                ),
            )
            await eventually(
                lambda: all("step" in cluster.status(name) for name in names),
                timeout=1200,
                interval=0.2,
                what="every job's progress in its status",
            )
            log, served = server.archive, len(server.archive)
            ages: list[float] = []
            worst = 0.0
            observe_until = time.monotonic() + periods * period
            while time.monotonic() < observe_until:
                now = trainers.step_now()
                sample = [(now - cluster.status(name)["step"]) * STEP_SECONDS for name in names]
                ages.extend(sample)
                worst = max(worst, *sample)
                await asyncio.sleep(0.25)
            accesses = operator_accesses(log[served:])
            memory = operator.rss()
    unknown = sum(
        1 for name in names if (cluster.condition("ProgressUnknown", name) or {}).get("status") != "False"
    )
    by_kind = Counter(f"{access.verb} {access.resource}" for access in accesses)
    return {
        "running jobs": jobs,
        "scrape period s": period,
        "create jobs/s": jobs / created_seconds,
        "median status age s": statistics.median(ages),
        "max status age s": worst,
        "max age / period": worst / period,
        "within 2 periods": worst <= 2 * period,
        "ProgressUnknown jobs": unknown,
        "requests/job/period": len(accesses) / jobs / periods,
        "status patches/job/period": by_kind["patch distillationjobs/status"] / jobs / periods,
        "operator RSS MiB": memory / 2**20,
        "RSS KiB/job": memory / 1024 / jobs,
    }


def _job_with_its_data(name: str) -> dict[str, Any]:
    """A job whose data path is on a volume, so that no storage warning is among its requests."""
    volumes = {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return job_manifest(name, cluster=volumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds of idling after the jobs are created"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each --jobs count, in turn")
    parser.add_argument("--running", type=int, nargs="*", default=[1000], help="running jobs, scraped")
    parser.add_argument("--scrape-period", type=float, default=10.0, help="the operator's, in seconds")
    parser.add_argument("--periods", type=int, default=3, help="scrape periods the status ages are watched")
    args = parser.parse_args()
    runs = alternate(args.jobs, args.repeats, lambda jobs: asyncio.run(measure(jobs, args.idle)))
    report(
        "operator",
        "Operator: jobs created against an emulated API server (1 operator, 2 CPU cores shared); "
        f"time: median (range) of {args.repeats} alternating runs, requests: median",
        [over_repeats(results, WITH_RANGE) for results in runs.values()],
        {"jobs": args.jobs, "idle_seconds": args.idle, "repeats": args.repeats},
    )
    if args.running:
        running = [
            asyncio.run(measure_running(jobs, args.scrape_period, args.periods)) for jobs in args.running
        ]
        report(
            "operator_running",
            "Operator: running jobs whose trainers serve real TrainerMetrics pages (2 CPU cores shared)",
            running,
            {"running": args.running, "scrape_period_seconds": args.scrape_period, "periods": args.periods},
        )


if __name__ == "__main__":
    main()
