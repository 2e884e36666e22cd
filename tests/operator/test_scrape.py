"""What holds the operator up with many running jobs: every trainer is read at once, and every handler runs
in the event loop that owns the shared state."""

import asyncio
import inspect

import aiohttp
import aiohttp.web
import kopf

from kubedistill.operator import handlers
from kubedistill.operator.progress import scrape_session

JOBS = 150
"""More running jobs than aiohttp's default connection pool (100) serves at once."""


async def test_the_trainers_of_more_than_a_hundred_jobs_are_read_at_once() -> None:
    arrived, everyone = 0, asyncio.Event()

    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        # Each trainer answers only once all of them are being read: a capped pool never gets there.
        nonlocal arrived
        arrived += 1
        if arrived == JOBS:
            everyone.set()
        await everyone.wait()
        return aiohttp.web.Response(text="kubedistill_step 1\n")

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", metrics)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with scrape_session() as http:

            async def scrape(job: int) -> int:
                async with http.get(
                    f"http://127.0.0.1:{port}/metrics?job={job}", timeout=timeout
                ) as response:
                    return response.status

            statuses = await asyncio.gather(*(scrape(job) for job in range(JOBS)), return_exceptions=True)
    finally:
        await runner.cleanup()
    assert statuses == [200] * JOBS


def test_every_handler_is_a_coroutine_run_in_the_event_loop_not_in_kopfs_thread_pool() -> None:
    # The status writer, the known Ray clusters and their locks belong to the event loop.
    registry = kopf.get_default_registry()
    ours = [
        handler.fn
        for group in (registry._activities, registry._watching, registry._spawning, registry._changing)
        for handler in group.get_all_handlers()
        if handler.fn.__module__ == handlers.__name__
    ]
    assert {fn.__name__ for fn in ours} >= {"login", "create_children", "track_job", "read_progress"}
    assert [fn.__name__ for fn in ours if not inspect.iscoroutinefunction(fn)] == []
