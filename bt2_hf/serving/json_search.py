"""``POST /search`` with a JSON body, answered as a plain ASGI handler: the hot path of ``bt2 serve``.

A vector query's search takes about a millisecond; FastAPI's route around it cost as much again (dependency
resolution, two thread-pool hops, response encoding). This handler parses the same :class:`SearchRequest`, gives the
same answers and the same refusals (status and ``detail``), and skips the rest. FastAPI still documents the route and
answers its multipart uploads.

Where the search runs: a vector query is searched on the event loop itself (``inline_vectors``): the hop to a worker
thread and back costs more than the search. The vector queries parsed in one turn of the loop are searched together,
in arrival order (:class:`~bt2_hf.serving.batching.VectorBatcher`). A text or image query is embedded by a model
(milliseconds to tens of milliseconds), so it goes to a worker thread, where concurrent text queries meet in one
micro-batch (:class:`~bt2_hf.serving.batching.TextBatcher`).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..compatibility import IncompatibleModelsError
from ..galleries.aliases import GalleryNotFoundError
from .batching import VectorBatcher
from .service import GalleryService, ServingError

try:  # orjson parses a 128-number vector about 6× faster than json; the standard library is the fallback
    import orjson
except ModuleNotFoundError:  # pragma: no cover - depends on the environment
    orjson = None


class SearchRequest(BaseModel):
    """One query: exactly one of ``text``, ``image_base64`` or ``vector``."""

    model_config = ConfigDict(extra="forbid")
    gallery: str | None = Field(None, description="alias or gallery directory name (default: the only one served)")
    k: int = Field(10, description="neighbours to return (1 to 1000)")
    text: str | None = Field(None, description="a text query (embedded by a text model)")
    image_base64: str | None = Field(None, description="an encoded image (PNG, JPEG, WebP), base64")
    vector: list[float] | None = Field(None, description="a query embedding of `model` (default: the gallery encoder)")
    model: str | None = Field(None, description="query model: a loaded model's name or fingerprint")


def decode_base64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(f"{what} is not valid base64.", 422) from None


def loads(body: bytes):
    return orjson.loads(body) if orjson is not None else json.loads(body)


def dumps(payload) -> bytes:
    if orjson is not None:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_search_arguments(body: bytes) -> dict[str, Any]:
    """The arguments of :meth:`GalleryService.search` from a JSON body (400 malformed JSON, 422 a wrong field)."""
    try:
        payload = loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # orjson's error is a JSONDecodeError too
        raise ServingError(f"Malformed JSON: {error}.", 400) from None
    try:
        query = SearchRequest.model_validate(payload)
    except ValidationError as error:
        raise ServingError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                     for e in error.errors()), 422) from None  # fmt: skip
    image = decode_base64(query.image_base64, "image_base64") if query.image_base64 is not None else None
    return {"gallery": query.gallery, "k": query.k, "text": query.text, "image": image, "vector": query.vector,
            "model": query.model}  # fmt: skip


def refusal(error: Exception) -> tuple[int, str] | None:
    """``(status, detail)`` of a refusal of the library, as the app's exception handlers answer it; ``None`` for
    anything else (a bug: the server answers 500)."""
    if isinstance(error, ServingError):
        return error.status, error.problem
    if isinstance(error, GalleryNotFoundError):
        return 404, str(error)
    if isinstance(error, IncompatibleModelsError):
        return 403, str(error)
    if isinstance(error, ValueError):  # BT2InputError and the library's other refusals of bad input
        return 400, str(error)
    return None


def bearer_token(headers: dict[bytes, bytes]) -> str:
    """The token a request carries: ``Authorization: Bearer …`` or ``X-BT2-Token``."""
    given = headers.get(b"authorization", b"").decode("latin-1")
    return given[7:] if given.lower().startswith("bearer ") else headers.get(b"x-bt2-token", b"").decode("latin-1")


def check_token(given: str, token: str | None) -> None:
    """Refuse a request that needs ``token`` and does not carry it (403 when the service has no token, else 401)."""
    if token is None:
        raise ServingError("This service was started without a token: writes are disabled (start it with "
                           "--token or BT2_SERVE_TOKEN).", 403)  # fmt: skip
    if not given or not secrets.compare_digest(given.encode(), token.encode()):
        raise ServingError("Missing or wrong token: send 'Authorization: Bearer <token>'.", 401)


class JsonSearchEndpoint:
    """Answers ``POST /search`` requests whose body is JSON (already read, within the size limit).

    Args:
        service (`GalleryService`): what answers.
        token (`str`, *optional*): the service's bearer token.
        open_reads (`bool`, *optional*, defaults to `True`): searches need no token.
        inline_vectors (`bool`, *optional*, defaults to `True`): search vector queries on the event loop (see the
            module docstring); `False` sends them to a worker thread like the other queries.
    """

    def __init__(self, service: GalleryService, token: str | None = None, open_reads: bool = True,
                 inline_vectors: bool = True):  # fmt: skip
        self.service, self.token, self.open_reads, self.inline_vectors = service, token, open_reads, inline_vectors
        self.vectors = VectorBatcher(service.search_vectors)

    async def __call__(self, headers: dict[bytes, bytes], body: bytes, send) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            if not self.open_reads:
                check_token(bearer_token(headers), self.token)
            arguments = json_search_arguments(body)
            if arguments["vector"] is not None and self.inline_vectors and arguments["text"] is None and (
                    arguments["image"] is None):  # fmt: skip
                answer = await self.vectors.search(
                    {name: arguments[name] for name in ("gallery", "k", "vector", "model")}
                )
            else:
                answer = await run_in_threadpool(lambda: self.service.search(**arguments))
            status, payload = 200, dumps(answer)
        except Exception as error:
            refused = refusal(error)
            if refused is None:
                raise
            status, payload = refused[0], dumps({"detail": refused[1]})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})
