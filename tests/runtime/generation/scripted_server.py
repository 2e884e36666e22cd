"""A small real OpenAI-compatible server on loopback whose answers are scripted per prompt: how hosted APIs
behave under load (429 with Retry-After, 5xx) and at their edges (empty content, finish_reason length,
tool calls, reasoning, usage). That is an external system's behaviour, so the test plays it; our client
meets it over real HTTP. Like the real API, it answers 400 to a body the `openai` package's own request
type refuses (`openai_contract`), and records why in `invalid`."""

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.runtime.generation.openai_contract import request_problem

Answer = tuple[int, dict[str, Any] | str, dict[str, str]]
"""HTTP status, JSON body (or text), headers."""


def completion(
    content: str | None,
    finish_reason: str = "stop",
    usage: tuple[int, int] = (7, 5),
    **message: Any,
) -> Answer:
    """A 200 answer; `message`: more fields of the assistant message (tool_calls, reasoning_content)."""
    prompt_tokens, completion_tokens = usage
    return (
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, **message},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
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
    invalid: list[str] = field(default_factory=list)
    """Why each body the OpenAI API would refuse was refused."""
    delay: float = 0.0
    """Seconds each answer takes."""
    in_flight: int = 0
    most_in_flight: int = 0
    on_request: Callable[[str], None] | None = None
    """Called with each valid request's last message before it is answered (in the server's thread)."""

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.authorizations.add(request.headers.get("Authorization", ""))
        problem = request_problem(body)
        if problem is not None:
            self.invalid.append(problem)
            return web.json_response({"error": {"message": problem}}, status=400)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        prompt = body["messages"][-1]["content"]
        if self.on_request is not None:
            self.on_request(prompt)
        answers = self.script.get(prompt) or [completion(f"an answer to {prompt}")]
        status, payload, headers = answers[min(self.asked[prompt], len(answers) - 1)]
        self.asked[prompt] += 1
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, headers=headers)
        return web.json_response(payload, status=status, headers=headers)


@contextmanager
def scripted_server(
    script: dict[str, list[Answer]], delay: float = 0.0, on_request: Callable[[str], None] | None = None
) -> Iterator[ScriptedServer]:
    """The server on a free loopback port, in a thread of its own (the code under test runs its own loop)."""
    server = ScriptedServer(script, delay=delay, on_request=on_request)
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
