"""The inference server: a FastAPI app with a demo page, ``/health`` and ``/predict``."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Annotated, AsyncGenerator

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from dataloupe.data import MAX_PIXELS, ImageDecodeError, image_pixels
from dataloupe._netsafety import host_header_is_loopback, host_of, host_refusal, token_matches
from dataloupe.serve._batcher import MicroBatcher, QueueFullError
from dataloupe.serve._budget import BudgetBusy, DecodeBudget
from dataloupe.serve._bundle import ModelBundle, top_k

FIELD = "file"
_BUFFER_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")  # PIL names the in-memory buffer
_MULTIPART_SLACK = 64 * 1024  # boundary and part headers on top of the file itself, bytes


@dataclass
class ServeConfig:
    """Server settings.

    Attributes:
        token: required on every API call when set (None = open, loopback only).
        max_upload_bytes: largest accepted image file, bytes.
        max_batch: most images per forward pass (1 = batching off).
        max_wait_ms: how long a batch waits for more requests, milliseconds.
        max_queue: most requests waiting for the model before answering 503.
        max_decodes: most uploads decoded at once.
        max_pixels_in_flight: most pixels (width x height, summed) of the uploads being
            decoded at once; with ``max_decodes`` it bounds the decode memory (~4-8 bytes
            a pixel). At least :data:`dataloupe.data.MAX_PIXELS`, the largest image accepted.
        decode_wait_s: how long an upload waits for room to decode before 503 (busy).
        loopback_hosts_only: refuse requests whose ``Host`` header is not a loopback name
            (DNS-rebinding guard; :func:`run_server` turns it on for loopback without a token).
    """

    token: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_decodes: int = field(default_factory=lambda: max(2, min(8, os.cpu_count() or 2)))
    max_pixels_in_flight: int = 2 * MAX_PIXELS
    decode_wait_s: float = 5.0
    loopback_hosts_only: bool = False


class _TooLarge(Exception):
    pass


async def _limited(stream: AsyncGenerator[bytes, None], limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge()
        yield chunk


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The bytes of multipart field ``file``, never reading more than the size limit allows."""
    too_large = HTTPException(413, f"file too large: limit is {max_bytes} bytes")
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(400, f"expected a multipart/form-data upload with field '{FIELD}'")
    body_limit = max_bytes + _MULTIPART_SLACK
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > body_limit:
        raise too_large
    parser = MultiPartParser(request.headers, _limited(request.stream(), body_limit), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise too_large from None
    except MultiPartException as e:
        raise HTTPException(400, f"bad multipart upload: {e.message}") from None
    try:
        upload = form.get(FIELD)
        if upload is None:
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise HTTPException(422, f"missing multipart field '{FIELD}' (got: {names})")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"field '{FIELD}' must be a file upload, not a text value")
        data = await upload.read()
        if len(data) > max_bytes:
            raise too_large
        return data
    finally:
        await form.close()


def _page() -> str:
    return resources.files("dataloupe.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(bundle: ModelBundle, config: ServeConfig | None = None) -> FastAPI:
    """Build the server app for ``bundle``.

    Routes: ``GET /`` demo page (static, holds no data), ``GET /health``,
    ``POST /predict`` (multipart field ``file``; optional ``?top_k=``) ->
    ``{"predictions": [{"label", "probability"}, ...]}`` sorted, all classes by default.

    Example:
        >>> app = create_app(load_bundle("a"), ServeConfig(max_batch=8))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    config = config or ServeConfig()
    batcher = MicroBatcher(bundle.predict_proba, max_batch=config.max_batch,
                           max_wait_ms=config.max_wait_ms, max_queue=config.max_queue)
    page = _page()
    budget = DecodeBudget(max_decodes=config.max_decodes,
                          max_pixels=max(config.max_pixels_in_flight, MAX_PIXELS), wait_s=config.decode_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="dataloupe inference", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.decode_budget = budget
    app.state.bundle = bundle

    @app.middleware("http")
    async def check_access(request: Request, call_next):
        if config.loopback_hosts_only and not host_header_is_loopback(request.headers.get("host")):
            status, body = host_refusal(host_of(request.headers.get("host")))
            return JSONResponse(body, status_code=status)
        if config.token and request.url.path not in ("/", "/favicon.ico"):
            if not token_matches(config.token, request.headers.get("authorization"),
                                 request.query_params.get("token")):
                return JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer <token>' "
                                     "or ?token=<token>"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": bundle.metadata.get("run") or bundle.source,
            "backend": bundle.backend,
            "classes": bundle.classes,
            "image_size": bundle.image_size,
            "max_upload_bytes": config.max_upload_bytes,
            "batching": batcher.stats(),
            "decoding": budget.stats(),
        }

    @app.post("/predict")
    async def predict(request: Request,
                      top_k_count: Annotated[int | None, Query(alias="top_k", ge=1)] = None) -> dict:
        # ?top_k= limits the list; default: every class, so the probabilities sum to 1.
        data = await _read_upload(request, config.max_upload_bytes)
        try:
            pixels = image_pixels(data)  # from the header: what decoding will cost
            async with budget.hold(pixels):
                x = await run_in_threadpool(bundle.load_image, data)
        except ImageDecodeError as e:
            raise HTTPException(400, _BUFFER_REPR.sub("", str(e))) from None
        except BudgetBusy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        try:
            probs = await batcher.submit(x)
        except QueueFullError as e:
            raise HTTPException(503, str(e)) from None
        k = len(bundle.classes) if top_k_count is None else top_k_count
        return {"predictions": top_k(probs[None], bundle.classes, k)[0]}

    return app


def run_server(bundle: ModelBundle, *, host: str = "127.0.0.1", port: int = 8000,
               config: ServeConfig | None = None, log_level: str = "info") -> None:
    """Serve ``bundle`` with uvicorn until interrupted; refuses a non-loopback host without a token."""
    import uvicorn

    from dataloupe._netsafety import access_rule, check_port_free

    config = config or ServeConfig()
    if access_rule(host, config.token, generate=False).loopback_only:
        config = replace(config, loopback_hosts_only=True)
    check_port_free(host, port)
    uvicorn.run(create_app(bundle, config), host=host, port=port, log_level=log_level)
