"""A small real OpenAI-compatible server on loopback whose answers are scripted per prompt: how hosted APIs
behave under load (429 with Retry-After, 5xx) and at their edges (empty content, finish_reason length).
That is an external system's behaviour, so the test plays it; our client meets it over real HTTP."""

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Answer = tuple[int, dict[str, Any] | str, dict[str, str]]
"""HTTP status, JSON body (or text), headers."""


def completion(content: str, finish_reason: str = "stop") -> Answer:
    return (
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
        },
        {},
    )


@dataclass
class ScriptedServer:
    script: dict[str, list[Answer]]
    """User message -> answers in turn (the last one repeats)."""
    url: str = ""
    asked: Counter[str] = field(default_factory=Counter)
    authorizations: set[str] = field(default_factory=set)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.authorizations.add(request.headers.get("Authorization", ""))
        prompt = body["messages"][-1]["content"]
        answers = self.script.get(prompt) or [completion(f"an answer to {prompt}")]
        status, payload, headers = answers[min(self.asked[prompt], len(answers) - 1)]
        self.asked[prompt] += 1
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, headers=headers)
        return web.json_response(payload, status=status, headers=headers)


@contextmanager
def scripted_server(script: dict[str, list[Answer]]) -> Iterator[ScriptedServer]:
    """The server on a free loopback port, in a thread of its own (the code under test runs its own loop)."""
    server = ScriptedServer(script)
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server._chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
