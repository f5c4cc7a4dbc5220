"""The FastAPI app: OpenAI's endpoints over one engine thread, with /health and /metrics.

Every failure a client can cause answers a 4xx in OpenAI's error shape; the handlers parse bodies
themselves (not FastAPI's 422 validation) so the status and shape are OpenAI's, not FastAPI's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmforge.device import pick_device, pick_dtype
from lmforge.errors import LmforgeError
from lmforge.infer.engine import Engine
from lmforge.models.gpt import GPT
from lmforge.models.io import load_model
from lmforge.serve import completions as api
from lmforge.serve.config import ServeConfig
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_body
from lmforge.serve.runner import EngineRunner
from lmforge.tokenizer.core import Tokenizer

log = logging.getLogger("lmforge.serve")

CLIENT_GONE = 499  # nginx's status for a client that closed the connection first (metrics only)


class Server:
    """What the handlers share: the model's tokenizer and template, the engine runner, the metrics."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, settings: ServeConfig, name: str, chat_template: str | None
    ):
        self.tokenizer, self.settings = tokenizer, settings
        self.name, self.chat_template = name, chat_template
        on_cuda = model.lm_head.weight.device.type == "cuda"
        engine = Engine(
            model, tokenizer, settings.max_batch, settings.max_len, "graph" if on_cuda else "eager"
        )
        self.max_len = engine.max_len
        self.metrics = Metrics(settings.max_batch)
        self.runner = EngineRunner(engine, self.metrics, settings.max_queue)
        self.started = int(time.time())


def load(source: str | Path, settings: ServeConfig) -> tuple[GPT, Tokenizer, str, str | None]:
    """(model, tokenizer, served name, chat template) from a model folder, on the configured device."""
    device = pick_device(settings.device)
    model, tokenizer = load_model(source, device=device, dtype=pick_dtype(settings.dtype, device))
    if tokenizer is None:
        raise LmforgeError(f"{source}: the model folder has no tokenizer.json; the server needs one")
    return model, tokenizer, Path(source).resolve().name, tokenizer.chat_template


def create_app(source: str | Path | tuple[GPT, Tokenizer], settings: ServeConfig | None = None) -> FastAPI:
    """The server for a model folder, or for a (model, tokenizer) already in memory.

    The chat template is ``settings.chat_template`` (a file), else the folder's (its tokenizer's, as
    ``Tokenizer.load`` reads it).
    The engine thread starts and stops with the app (its lifespan).
    """
    settings = settings or ServeConfig()
    if isinstance(source, tuple):
        (model, tokenizer), name = source, "lmforge"
        template = tokenizer.chat_template
    else:
        model, tokenizer, name, template = load(source, settings)
    if settings.chat_template:
        template = Path(settings.chat_template).read_text(encoding="utf-8")
    server = Server(model, tokenizer, settings, settings.model_name or name, template)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.runner.start()
        log.info("serving %s (context %d, %d slots)", server.name, server.max_len, settings.max_batch)
        yield
        server.runner.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _routes(app, server)
    return app


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _check_key(server: Server, request: Request) -> None:
    key = server.settings.api_key
    if key is None:
        return
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
        raise APIError(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read: what arrives next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """``work``'s result, or None when the client leaves first (``work`` is cancelled: it aborts its job)."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # a no-op once it is done
    return task.result() if task.done() else None


def _routes(app: FastAPI, server: Server) -> None:
    async def endpoint(
        request: Request,
        cls: type,
        planner: Callable[[Server, Any], api.Plan],
        respond: Callable[..., dict],
        chunks: Callable[..., AsyncIterator[dict]],
        logprobs: Callable[[Any], bool],
    ) -> Response:
        """Parse, plan, submit; answer the whole response, or stream it."""
        try:
            _check_key(server, request)
            body = parse_body(await request.body(), cls)
            plan = planner(server, body)
            job = server.runner.submit(plan.jobs)
        except Exception as e:
            return _error(api.api_error(e))
        wants_lp = logprobs(body)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = api.sse(chunks(server, job, plan, wants_lp, usage))
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            choices = await _until_disconnect(request, api.collect(server, job, plan))
        except Exception as e:
            return _error(api.api_error(e))
        if choices is None:
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(respond(server, plan, choices, wants_lp))

    async def counted(request: Request, *args: Any) -> Response:
        response = await endpoint(request, *args)
        server.metrics.request_done(response.status_code)
        return response

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await counted(
            request,
            CompletionRequest,
            api.completion_plan,
            api.completion_response,
            api.completion_chunks,
            lambda b: b.logprobs is not None,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await counted(
            request,
            ChatCompletionRequest,
            api.chat_plan,
            api.chat_response,
            api.chat_chunks,
            lambda b: b.logprobs,
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            _check_key(server, request)
        except APIError as e:
            server.metrics.request_done(e.status)
            return _error(e)
        server.metrics.request_done(200)
        card = {"id": server.name, "object": "model", "created": server.started, "owned_by": "lmforge"}
        return JSONResponse({"object": "list", "data": [{**card, "max_model_len": server.max_len}]})

    @app.get("/health")
    async def health() -> Response:
        alive = server.runner.thread.is_alive() and not server.runner.closing
        return Response(status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        """Unknown paths and methods, in OpenAI's error shape too."""
        return _error(APIError(e.status_code, str(e.detail), headers=dict(e.headers or {})))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))
