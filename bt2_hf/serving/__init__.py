"""The HTTP search service over galleries (``bt2 serve``): search, dual-write, backfill beside it, cutover, metrics.

- :class:`GalleryService`: what the service answers, without HTTP (galleries of a root, query models, backfill
  jobs, dual-write, cutover and rollback through :class:`~bt2_hf.galleries.aliases.GalleryRoot`).
- :func:`create_app`: the FastAPI app over it (needs the ``serve`` extra: fastapi, uvicorn, python-multipart).
"""

from .service import GalleryService, ServingError


def create_app(*args, **kwargs):
    """The ASGI app of :class:`GalleryService` (see :func:`bt2_hf.serving.app.create_app`); imports FastAPI lazily."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["GalleryService", "ServingError", "create_app"]
