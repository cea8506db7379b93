"""The HTTP layer of ``bt2 serve`` (FastAPI): parse, authorise, call :class:`GalleryService`, answer JSON.

Every refusal is a 4xx whose ``detail`` names the problem: 400 malformed input or gallery name, 401/403 token or
refused query model, 404 unknown gallery or model, 409 conflicting state, 413 body too large, 415 content type or
unreadable image, 422 a field of the wrong kind (wrong vector width, k out of range). A 500 is a bug.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..compatibility import IncompatibleModelsError
from ..errors import BT2InputError
from ..galleries.aliases import GalleryNotFoundError
from .metrics import CONTENT_TYPE, Metrics
from .service import GalleryService, ServingError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 20 << 20
ROUTES = ("/search", "/galleries", "/items", "/backfill", "/cutover", "/rollback", "/healthz", "/metrics", "/docs",
          "/openapi.json")  # fmt: skip


class SearchRequest(BaseModel):
    """One query: exactly one of ``text``, ``image_base64`` or ``vector``."""

    model_config = ConfigDict(extra="forbid")
    gallery: str | None = Field(None, description="alias or gallery directory name (default: the only one served)")
    k: int = Field(10, description="neighbours to return (1 to 1000)")
    text: str | None = Field(None, description="a text query (embedded by a text model)")
    image_base64: str | None = Field(None, description="an encoded image (PNG, JPEG, WebP), base64")
    vector: list[float] | None = Field(None, description="a query embedding of `model` (default: the gallery encoder)")
    model: str | None = Field(None, description="query model: a loaded model's name or fingerprint")


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


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str
    to: str | None = Field(None, description="cutover: the gallery to switch to (default: finalise the backfill)")


class _Guard:
    """ASGI wrapper: bodies over the size limit get a 413 before the app reads them; every request is timed."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        route = scope["path"] if scope["path"] in ROUTES else "other"

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


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(f"{what} is not valid base64.", 422) from None


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
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ServingError(f"Malformed JSON: {error}.", 400) from None
        try:
            query = SearchRequest.model_validate(payload)
        except ValidationError as error:
            raise ServingError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                         for e in error.errors()), 422) from None  # fmt: skip
        image = _b64(query.image_base64, "image_base64") if query.image_base64 is not None else None
        arguments = {"gallery": query.gallery, "k": query.k, "text": query.text, "image": image,
                     "vector": query.vector, "model": query.model}  # fmt: skip
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
               max_body: int = DEFAULT_MAX_BODY):  # fmt: skip
    """The ASGI app: the FastAPI routes over ``service``, wrapped by the body limit and the request metrics.

    Args:
        service (`GalleryService`): what answers.
        token (`str`, *optional*): the bearer token of write endpoints (and of reads when ``open_reads`` is False);
            without one, writes are refused (403).
        open_reads (`bool`, *optional*, defaults to `True`): searches and descriptions need no token.
        max_body (`int`, *optional*): largest request body in bytes (413 above it).
    """
    metrics = Metrics()
    app = FastAPI(title="bt2 serve", description="Search galleries of bt2_hf with compatible query models; dual-write "
                  "items during a backfill; cut over and roll back.", version="1")  # fmt: skip
    app.state.service, app.state.metrics = service, metrics

    def _check(request: Request, needed: bool) -> None:
        if not needed:
            return
        if token is None:
            raise ServingError("This service was started without a token: writes are disabled (start it with "
                               "--token or BT2_SERVE_TOKEN).", 403)  # fmt: skip
        given = request.headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-bt2-token", "")
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise ServingError("Missing or wrong token: send 'Authorization: Bearer <token>'.", 401)

    def reader(request: Request) -> None:
        _check(request, not open_reads)

    def writer(request: Request) -> None:
        _check(request, True)

    def json_body(request: Request) -> None:
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
            row["image"] = _b64(image, f"item {item.id!r}'s image_base64") if image is not None else None
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

    return _Guard(app, metrics, max_body)
