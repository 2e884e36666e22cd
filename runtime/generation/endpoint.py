"""Responses from an OpenAI-compatible endpoint: `POST {baseUrl}/chat/completions`, one request per
(prompt, sample), at most `concurrency` in flight.

A request answered 429 or 5xx, or that could not connect or timed out, is retried up to `maxRetries` times
with exponential backoff and full jitter (base x 2^attempt, capped), or after the server's `Retry-After`
when it sends one. A request still failing after that comes back as a failure, recorded by the caller. A 401
or 403 stops the whole phase: the key is wrong for every request alike.

The API key goes only into the Authorization header; no message here includes headers.
"""

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubedistill.api.generation import EndpointSpec
from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.generation.store import Response, Settings

RETRIED_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_SECONDS = 30.0


class EndpointRefused(Exception):
    """The endpoint refuses the job as a whole (a bad API key); one line for the user."""


@dataclass(frozen=True)
class Request:
    key: tuple[str, int]
    """(prompt id, sample index)."""
    messages: list[Message]
    seed: int
    tools: list[Any] | None = None
    """The record's function definitions, for a prompt that may call them."""


@dataclass(frozen=True)
class Outcome:
    key: tuple[str, int]
    response: Response | None
    """None when the request kept failing (`failure` says how)."""
    failure: str = ""


class ChatCompletionsClient:
    def __init__(
        self,
        endpoint: EndpointSpec,
        settings: Settings,
        api_key: str | None,
        backoff_seconds: float = 0.5,
    ) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._backoff = backoff_seconds

    def body(self, request: Request) -> dict[str, Any]:
        settings = self._settings
        return {
            "model": self._endpoint.model,
            "messages": request.messages,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens,
            "seed": request.seed,
            "stream": False,
        } | ({"tools": request.tools} if request.tools else {})

    async def complete_all(self, requests: Sequence[Request]) -> AsyncIterator[Outcome]:
        """Outcomes in the order they finish."""
        limit = asyncio.Semaphore(self._endpoint.concurrency)
        timeout = aiohttp.ClientTimeout(total=self._endpoint.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:

            async def one(request: Request) -> Outcome:
                async with limit:
                    return await self._complete(session, request)

            tasks = [asyncio.ensure_future(one(request)) for request in requests]
            try:
                for finished in asyncio.as_completed(tasks):
                    yield await finished
            finally:
                for task in tasks:
                    task.cancel()

    async def _complete(self, session: aiohttp.ClientSession, request: Request) -> Outcome:
        failure = ""
        for attempt in range(self._endpoint.max_retries + 1):
            wait: float | None = None
            try:
                async with session.post(self._url, json=self.body(request)) as answer:
                    if answer.status == 200:
                        return Outcome(request.key, _response_of(await answer.json(content_type=None)))
                    text = (await answer.text())[:200]
                    failure = f"HTTP {answer.status}: {text.strip() or answer.reason}"
                    if answer.status in (401, 403):
                        raise EndpointRefused(
                            f"spec.generation.endpoint.apiKey: {self._url} refused the request with "
                            f"{failure}; check the API key"
                        )
                    if answer.status not in RETRIED_STATUSES:
                        return Outcome(request.key, None, failure)
                    wait = _retry_after(answer.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
                failure = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            except (ValueError, KeyError, TypeError, IndexError) as error:
                # A 200 whose body is not a chat completion: the server is not what baseUrl promised.
                return Outcome(request.key, None, f"not a chat completion: {type(error).__name__}: {error}")
            if attempt < self._endpoint.max_retries:
                cap = min(MAX_BACKOFF_SECONDS, self._backoff * 2**attempt)
                await asyncio.sleep(wait if wait is not None else random.uniform(0, cap))
        return Outcome(request.key, None, f"{failure} (after {self._endpoint.max_retries} retries)")


def _response_of(completion: dict[str, Any]) -> Response:
    choice = completion["choices"][0]
    content = choice["message"].get("content") or ""
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not text")
    return Response(content, str(choice.get("finish_reason") or "stop"))


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return min(MAX_BACKOFF_SECONDS, max(0.0, float(header)))
    except ValueError:
        return None  # an HTTP date: rare from these APIs; the backoff stands in for it
