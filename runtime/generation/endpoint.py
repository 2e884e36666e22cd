"""Responses from an OpenAI-compatible endpoint: `POST {baseUrl}/chat/completions`, one request per
(prompt, sample), at most `concurrency` in flight.

A request answered 429 or 5xx, or that could not connect or timed out, is retried up to `maxRetries` times
with exponential backoff and full jitter (base x 2^attempt, capped), or after the server's `Retry-After`
when it sends one. A request still failing after that comes back as a failure, recorded by the caller and
asked again by the next run. A 401 or 403 stops the whole phase (the key is wrong for every request alike),
and so does any other 4xx before the endpoint has answered once: a wrong model name, or a server that takes
no `tools` (vLLM without `--enable-auto-tool-choice`) would refuse every request alike. A 4xx after that
refuses that request only (a prompt too long for the model).

Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` are honoured as curl does (aiohttp's `trust_env`, aiohttp 3.14
`client.py:813-817`, `helpers.py:324-336`), since a cluster's egress often goes through one.

The API key goes only into the Authorization header; no message here includes headers. The lines of
aiohttp, openai-python and SGLang cited here are checked in tests/runtime/generation/test_cited_sources.py.
"""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubedistill.api.generation import EndpointSpec
from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.data.messages import wire_messages
from kubedistill.runtime.generation.logprobs import token_logprobs_of
from kubedistill.runtime.generation.store import FAILED, REJECTED, Response, Settings, Usage

RETRIED_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 30.0
"""Limit on opening a connection (through the proxy, TLS included); the answer has its own limit."""


class EndpointRefused(Exception):
    """The endpoint refuses the job as a whole (a bad API key, a model it does not serve); one line."""


@dataclass(frozen=True)
class Request:
    key: tuple[str, int]
    """(prompt id, sample index)."""
    messages: list[Message]
    seed: int
    tools: list[Any] | None = None
    """The record's function definitions, for a prompt that may call them."""
    token_ids: tuple[int, ...] = ()
    """scoreAnswers: the chat with its answer, as the student's token ids, for the endpoint to score."""


@dataclass(frozen=True)
class Outcome:
    key: tuple[str, int]
    response: Response | None
    """None when the request kept failing or was refused (`failure` says how, `reason` which)."""
    failure: str = ""
    reason: str = FAILED
    """`failed` (asked again by the next run) or `rejected` (this request is refused for good)."""


class ChatCompletionsClient:
    path = "/chat/completions"

    def __init__(
        self,
        endpoint: EndpointSpec,
        settings: Settings,
        api_key: str | None,
        answer_timeout: float,
        backoff_seconds: float = 0.5,
    ) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._url = endpoint.base_url.rstrip("/") + self.path
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._answer_timeout = answer_timeout
        self._backoff = backoff_seconds
        self._answered = False
        """Whether the endpoint has answered a request (so a 4xx is about one request, not the job)."""
        self.retrying: dict[tuple[str, int], str] = {}
        """The requests waiting to be sent again, with their last failure: what a progress line reports while
        an endpoint that is down answers nothing for minutes."""

    def body(self, request: Request) -> dict[str, Any]:
        settings = self._settings
        # max_completion_tokens, not max_tokens: OpenAI refuses max_tokens for its reasoning models
        # (openai-python `types/chat/completion_create_params.py:196-204`), and vLLM and SGLang take both
        # (vLLM `chat_completion/protocol.py` ChatCompletionRequest.build_tok_params; SGLang 0.5.23
        # `srt/entrypoints/openai/protocol.py:1214`). Sampling settings go only when the manifest sets them:
        # those models refuse any temperature but their default.
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p}
        return {
            "model": self._endpoint.model,
            "messages": wire_messages(request.messages),
            "max_completion_tokens": settings.max_new_tokens,
            "seed": request.seed,
            "stream": False,
            **{key: value for key, value in sampling.items() if value is not None},
            **({"tools": request.tools} if request.tools else {}),
            # The top-k at every generated token (openai-python `types/chat/completion_create_params.py:182,
            # 424-430`: `logprobs`, `top_logprobs` 0-20; SGLang 0.5.23 `srt/entrypoints/openai/
            # serving_chat.py:1372-1374`). transformers serve 5.25 ignores both
            # (`transformers/cli/serving/chat_completion.py:70-88`): its answers carry none.
            **({"logprobs": True, "top_logprobs": settings.top_logprobs} if settings.top_logprobs else {}),
        }

    async def complete_all(self, requests: Sequence[Request]) -> AsyncIterator[Outcome]:
        """Outcomes in the order they finish."""
        limit = asyncio.Semaphore(self._endpoint.concurrency)
        # One connection per request in flight: aiohttp's default pool holds 100 (aiohttp 3.14
        # `connector.py:287`), and the wait for a pooled connection counts against the request's timeout
        # (`client.py:703-708`, `connector.py:631-645`), so up to 1024 in flight would time out queueing.
        connector = aiohttp.TCPConnector(limit=self._endpoint.concurrency, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(
            total=CONNECT_TIMEOUT_SECONDS + self._answer_timeout,
            connect=CONNECT_TIMEOUT_SECONDS,
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers, trust_env=True
        ) as session:

            async def one(request: Request) -> Outcome:
                async with limit:
                    try:
                        return await self._complete(session, request)
                    finally:
                        self.retrying.pop(request.key, None)

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
                        response = self.response_of(await answer.json(content_type=None))
                        self._answered = True
                        return Outcome(request.key, response)
                    text = (await answer.text())[:300]
                    failure = f"HTTP {answer.status}: {text.strip() or answer.reason}"
                    if answer.status in (401, 403):
                        raise EndpointRefused(
                            f"spec.generation.endpoint.apiKey: {self._url} refused the request with "
                            f"{failure}; check the API key"
                        )
                    if answer.status not in RETRIED_STATUSES:
                        if not self._answered:
                            raise EndpointRefused(
                                f"spec.generation.endpoint: {self._url} refused the first request with "
                                f"{failure}; check endpoint.model, and that the server takes what the "
                                f"request asks ({self.asks})"
                            )
                        return Outcome(request.key, None, failure, REJECTED)
                    wait = _retry_after(answer.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
                failure = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            except (ValueError, KeyError, TypeError, IndexError) as error:
                # A 200 whose body is not a completion: the server is not what baseUrl promised.
                return Outcome(request.key, None, f"not a {self.what}: {type(error).__name__}: {error}")
            if attempt < self._endpoint.max_retries:
                self.retrying[request.key] = failure
                cap = min(MAX_BACKOFF_SECONDS, self._backoff * 2**attempt)
                await asyncio.sleep(wait if wait is not None else random.uniform(0, cap))
        return Outcome(request.key, None, f"{failure} (after {self._endpoint.max_retries} retries)")

    what = "chat completion"
    asks = "a record's tools need a server that parses tool calls"

    @staticmethod
    def response_of(completion: dict[str, Any]) -> Response:
        return _response_of(completion)


class ScoringClient(ChatCompletionsClient):
    """spec.generation.scoreAnswers: `POST {baseUrl}/completions` with the chat's token ids as the prompt,
    `echo` and `logprobs`: the endpoint returns its top-k at every prompt token, then at one generated token
    (which is not read).

    The one form both servers take: vLLM computes the prompt's log-probabilities for `echo` with `logprobs`
    (`entrypoints/openai/completion/protocol.py` CompletionRequest.to_sampling_params: `prompt_logprobs =
    self.logprobs`; `completion/serving.py` puts them before the answer's in `logprobs`); SGLang scores from
    the first prompt token for `echo` with `logprobs` (0.5.23 `srt/entrypoints/openai/serving_completions.py:
    88-92`, its warning at 77-81 notwithstanding). One token is generated, not none: SGLang refuses
    `max_tokens: 0` (`protocol.py:448-452`). Token ids as the prompt (both take a list of ints: vLLM
    CompletionRequest.prompt, SGLang `protocol.py:372` and `serving_completions.py:98-103`) so that the
    positions are exactly the student's: text would be tokenised again by the server."""

    path = "/completions"
    what = "completion"
    asks = "scoreAnswers needs a server that scores a prompt's tokens, echo with logprobs: vLLM or SGLang"

    def body(self, request: Request) -> dict[str, Any]:
        return {
            "model": self._endpoint.model,
            "prompt": list(request.token_ids),
            "echo": True,
            "logprobs": self._settings.top_logprobs,
            "max_tokens": 1,
            "stream": False,
            # vLLM names the top tokens by id instead of text; SGLang ignores what it does not know.
            "return_tokens_as_token_ids": True,
        }

    @staticmethod
    def response_of(completion: dict[str, Any]) -> Response:
        (choice, *_) = completion["choices"]
        scores = choice["logprobs"]
        if not isinstance(scores, dict) or not isinstance(scores.get("top_logprobs"), list):
            raise TypeError("no logprobs.top_logprobs in the completion")
        usage = completion.get("usage") or {}
        return Response(
            "",
            str(choice.get("finish_reason") or "stop"),
            usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            scores=scores,
        )


def _response_of(completion: dict[str, Any]) -> Response:
    choice = completion["choices"][0]
    message = choice["message"]
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not text")
    # The thinking of a reasoning teacher: SGLang's `reasoning_content` (0.5.23
    # `srt/entrypoints/openai/protocol.py:1293-1297`), vLLM's `reasoning` (`vllm/entrypoints/openai/
    # chat_completion/protocol.py` ChatMessage); OpenAI's own models return none.
    reasoning = message.get("reasoning_content") or message.get("reasoning") or None
    usage = completion.get("usage") or {}
    return Response(
        content,
        str(choice.get("finish_reason") or "stop"),
        tool_calls=[_tool_call(call, j) for j, call in enumerate(message.get("tool_calls") or [])] or None,
        reasoning=reasoning if isinstance(reasoning, str) else None,
        usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
        logprobs=token_logprobs_of(logprobs["content"] or [])
        if (logprobs := choice.get("logprobs"))
        else None,
    )


def _tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """A call of the answer as the API sends it (`arguments` JSON text, which the data pipeline reads); an id
    where a server gave none, for the tool results a later turn pairs with it."""
    function = call["function"]
    arguments = function.get("arguments")
    return {
        "id": str(call.get("id") or f"call_{index}"),
        "type": "function",
        "function": {
            "name": str(function["name"]),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return min(MAX_BACKOFF_SECONDS, max(0.0, float(header)))
    except ValueError:
        return None  # an HTTP date: rare from these APIs; the backoff stands in for it
