"""Open a gallery by location: a directory (faiss on disk) or a Milvus URI (a milvus-lite ``.db`` file or a server)."""

from __future__ import annotations

import os
from pathlib import Path

from .faiss_store import FaissGallery

DEFAULT_COLLECTION = "bt2_gallery"


def is_milvus_uri(location: str | os.PathLike) -> bool:
    """A milvus-lite file (``*.db``) or a server address (``http://``, ``https://``, ``tcp://``)."""
    text = str(location)
    return text.endswith(".db") or text.startswith(("http://", "https://", "tcp://", "unix:"))


def open_gallery(location: str | os.PathLike, collection: str | None = None):
    """A :class:`FaissGallery` for a directory, a :class:`~bt2_hf.galleries.milvus_store.MilvusGallery` for a URI."""
    if is_milvus_uri(location):
        from .milvus_store import MilvusGallery

        return MilvusGallery.open(str(location), collection or DEFAULT_COLLECTION)
    return FaissGallery.open(Path(location))
