"""The HTTP layer of ``bt2 serve`` (FastAPI): parse, authorise, call :class:`GalleryService`, answer JSON.

Every refusal is a 4xx whose ``detail`` names the problem: 400 malformed input or gallery name, 401/403 token or
refused query model, 404 unknown gallery or model, 409 conflicting state, 413 body too large, 415 content type or
unreadable image, 422 a field of the wrong kind (wrong vector width, k out of range). A 500 is a bug.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..compatibility import IncompatibleModelsError
from ..errors import BT2InputError
from ..galleries.aliases import GalleryNotFoundError
from .busy_poll import BusyPoll
from .json_search import (
    JsonSearchEndpoint,
    SearchRequest,
    bearer_token,
    check_token,
    decode_base64,
    json_search_arguments,
)
from .metrics import CONTENT_TYPE, Metrics
from .service import GalleryService, ServingError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 20 << 20
DEFAULT_BUSY_POLL = 0.00025  # seconds (see busy_poll.py)
ROUTES = ("/search", "/galleries", "/items", "/backfill", "/cutover", "/rollback", "/healthz", "/metrics", "/docs",
          "/openapi.json")  # fmt: skip


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int | str
    text: str | None = None
    image_base64: str | None = None
    vectors: dict[str, list[float]] | None = Field(None, description="model name or fingerprint → its embedding")
    label: int | str | None = None
    path: str | None = None


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gallery: str | None = None
    items: list[Item] = Field(..., min_length=1, max_length=10_000)


class BackfillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gallery: str | None = None
    model: str = Field(..., description="a loaded model (name or fingerprint)")
    data: str = Field(..., description="the gallery's dataset, as given to `bt2 embed` (a path on the server)")
    split: str | None = None
    column: str | None = None
    id_column: str | None = None
    order: str | None = Field(None, description="random or priority (a backfill in progress keeps its own)")
    seed: int | None = None
    batch_size: int = Field(1024, ge=1, le=100_000, description="items per committed batch")
    allow_unmeasured: bool = False
    pause: float = Field(0.0, ge=0.0, le=60.0, description="seconds between batches (leaves CPU to searches)")
    priority: Literal["low", "normal"] = Field("low", description="low: yield to the searches (wait for quiet "
                                               "traffic before each step, at most share of the time under load); "
                                               "normal: flat out")  # fmt: skip
    share: float | None = Field(None, gt=0.0, le=1.0, description="a low-priority backfill's share of the time "
                                "under continuous search load (default 0.2)")  # fmt: skip


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str
    to: str | None = Field(None, description="cutover: the gallery to switch to (default: finalise the backfill)")


class _Guard:
    """ASGI wrapper: bodies over the size limit get a 413 before the app reads them; every request is timed; a JSON
    search goes straight to ``json_search`` (the hot path, see :mod:`bt2_hf.serving.json_search`)."""

    def __init__(self, app, metrics: Metrics, max_body: int, json_search: JsonSearchEndpoint, poll: BusyPoll):
        self.app, self.metrics, self.max_body, self.json_search, self.poll = app, metrics, max_body, json_search, poll

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        route = scope["path"] if scope["path"] in ROUTES else "other"
        self.poll.started()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                return await self._too_large(timed_send, int(declared))
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, more = bytearray(), True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_body:
                        return await self._too_large(timed_send, None)
                kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                if route == "/search" and scope["method"] == "POST" and kind == b"application/json":
                    return await self.json_search(headers, bytes(body), timed_send)
                replayed = [False]

                async def replay():
                    if replayed[0]:
                        return await receive()
                    replayed[0] = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}

                return await self.app(scope, replay, timed_send)
            return await self.app(scope, receive, timed_send)
        finally:
            self.metrics.observe(route, scope["method"], status[0], time.perf_counter() - started)
            self.poll.answered()

    async def _too_large(self, send, size):
        limit = f"{self.max_body / (1 << 20):.0f} MiB"
        detail = (
            f"The request body is {'over' if size is None else f'{size / (1 << 20):.1f} MiB, over'} the "
            f"service's limit of {limit}: send a smaller image (or start the service with a larger --max_body_mb)."
        )
        payload = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal of the library becomes a 4xx with its message (never a 500): the service's own, a missing
    gallery (404), a refused model (403), bad input (400), and request validation (400 malformed JSON, else 422)."""

    @app.exception_handler(ServingError)
    async def _serving_error(request, error: ServingError):
        return JSONResponse({"detail": error.problem}, status_code=error.status)

    @app.exception_handler(GalleryNotFoundError)
    async def _not_found(request, error):
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(IncompatibleModelsError)
    async def _refused(request, error):
        return JSONResponse({"detail": str(error)}, status_code=403)

    @app.exception_handler(BT2InputError)
    async def _bad_input(request, error):
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(ValueError)
    async def _bad_value(request, error):  # the library's way of refusing bad input (widths, data sets, settings)
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error: RequestValidationError):
        errors = error.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            where = next(e for e in errors if e.get("type") == "json_invalid")
            return JSONResponse({"detail": f"Malformed JSON: {where.get('ctx', {}).get('error', where.get('msg'))}"},
                                status_code=400)  # fmt: skip
        return JSONResponse({"detail": [{"loc": e.get("loc"), "msg": e.get("msg")} for e in errors]},
                            status_code=422)  # fmt: skip


async def _search_arguments(request: Request) -> dict[str, Any]:
    """The arguments of ``GalleryService.search`` from a JSON body or a multipart upload (415 for anything else)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        arguments = json_search_arguments(await request.body())
    elif kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ServingError("A multipart search needs an 'image' file field.", 422)
        try:
            k = int(form.get("k", 10))
        except ValueError:
            raise ServingError(f"k must be an integer, got {form.get('k')!r}.", 422) from None
        arguments = {
            "gallery": form.get("gallery"),
            "k": k,
            "image": await upload.read(),
            "model": form.get("model"),
        }
    else:
        raise ServingError(f"Send the query as application/json or multipart/form-data, not "
                           f"{kind or 'no content type'!r}.", 415)  # fmt: skip
    return arguments


def create_app(service: GalleryService, token: str | None = None, open_reads: bool = True,
               max_body: int = DEFAULT_MAX_BODY, inline_vectors: bool = True,
               busy_poll: float = DEFAULT_BUSY_POLL):  # fmt: skip
    """The ASGI app: the FastAPI routes over ``service``, wrapped by the body limit and the request metrics.

    Args:
        service (`GalleryService`): what answers.
        token (`str`, *optional*): the bearer token of write endpoints (and of reads when ``open_reads`` is False);
            without one, writes are refused (403).
        open_reads (`bool`, *optional*, defaults to `True`): searches and descriptions need no token.
        max_body (`int`, *optional*): largest request body in bytes (413 above it).
        inline_vectors (`bool`, *optional*, defaults to `True`): search vector queries on the event loop rather than
            in a worker thread (see :mod:`bt2_hf.serving.json_search`).
        busy_poll (`float`, *optional*): seconds the event loop keeps polling after the last answer instead of
            sleeping, while no backfill job runs (see :mod:`bt2_hf.serving.busy_poll`); 0 turns it off.
    """
    poll = BusyPoll(busy_poll, service.backfilling)  # refuses a bad window before anything is built
    metrics = Metrics()
    app = FastAPI(title="bt2 serve", description="Search galleries of bt2_hf with compatible query models; dual-write "
                  "items during a backfill; cut over and roll back.", version="1")  # fmt: skip
    app.state.service, app.state.metrics = service, metrics

    def _check(request: Request, needed: bool) -> None:
        if not needed:
            return
        check_token(bearer_token(dict(request.headers.raw)), token)

    async def reader(request: Request) -> None:  # async: checked on the loop, no thread-pool hop
        _check(request, not open_reads)

    async def writer(request: Request) -> None:
        _check(request, True)

    async def json_body(request: Request) -> None:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ServingError(f"Send the body as application/json, not {kind or 'no content type'!r}.", 415)

    _add_error_handlers(app)

    search_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary"}, "gallery": {"type": "string"},
            "k": {"type": "integer"}, "model": {"type": "string"}, "text": {"type": "string"}}}},
    }}}  # fmt: skip

    @app.post("/search", dependencies=[Depends(reader)], openapi_extra=search_body,
              summary="Search a gallery with a text, an uploaded image or a vector")  # fmt: skip
    async def search(request: Request) -> dict[str, Any]:
        arguments = await _search_arguments(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(lambda: service.search(**arguments))

    @app.get("/galleries", dependencies=[Depends(reader)], summary="Galleries, aliases, models, backfill progress")
    def galleries() -> dict[str, Any]:
        return service.describe()

    @app.post("/items", dependencies=[Depends(writer), Depends(json_body)],
              summary="Dual-write items into the served gallery (and its rollback standby)")  # fmt: skip
    def items(request: ItemsRequest) -> dict[str, Any]:
        rows = []
        for item in request.items:
            row = item.model_dump()
            image = row.pop("image_base64")
            row["image"] = decode_base64(image, f"item {item.id!r}'s image_base64") if image is not None else None
            rows.append(row)
        return service.add_items(request.gallery, rows)

    @app.post("/backfill", dependencies=[Depends(writer), Depends(json_body)],
              summary="Start or resume a backfill beside the service")  # fmt: skip
    def start_backfill(request: BackfillRequest) -> dict[str, Any]:
        arguments = request.model_dump()
        return service.start_backfill(arguments.pop("gallery"), arguments.pop("model"), arguments.pop("data"),
                                      **arguments)  # fmt: skip

    @app.post("/cutover", dependencies=[Depends(writer), Depends(json_body)],
              summary="Switch an alias to the new model's gallery")  # fmt: skip
    def cutover(request: AliasRequest) -> dict[str, Any]:
        return service.cutover(request.alias, request.to)

    @app.post("/rollback", dependencies=[Depends(writer), Depends(json_body)],
              summary="Switch an alias back to the gallery it served before")  # fmt: skip
    def rollback(request: AliasRequest) -> dict[str, Any]:
        if request.to is not None:
            raise ServingError("A rollback goes back to the alias's standby; 'to' is for cutover.", 422)
        return service.rollback(request.alias)

    @app.get("/healthz", summary="Liveness: the service answers and its root is readable")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "galleries": len(service.root.galleries()), "models": len(service.registry.models)}

    @app.get("/metrics", dependencies=[Depends(reader)], summary="Prometheus metrics (text format)")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(service.gauges()), media_type=CONTENT_TYPE)

    return _Guard(app, metrics, max_body, JsonSearchEndpoint(service, token, open_reads, inline_vectors), poll)
