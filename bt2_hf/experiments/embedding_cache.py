"""Features of a list of texts by a frozen encoder, cached on disk so that a rerun skips the encoder.

What is cached is the encoder's pooled output before normalisation (what a head trained on the frozen encoder
takes); :func:`embed_texts_cached` returns it L2-normalised (the sentence embedding) unless ``normalize=False``.

The key is the encoder's fingerprint (its stored weights, tokenizer, pooling and truncation) and a digest of the texts
in order, so another model, another tokenizer or any changed text is a miss, never a stale hit. Each entry is one
``.npy`` file written atomically (:func:`bt2_hf.utils.io.atomic_write_bytes`); an unreadable or misshapen entry is
recomputed and replaced (a cache holds only derived data).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError
from ..utils.io import atomic_write_bytes, atomic_write_json
from ..utils.readers import load_npy

logger = logging.getLogger(__name__)


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (each length-prefixed, so no two lists share a digest by concatenation)."""
    digest = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass
class CachedEmbeddings:
    """The result of :func:`embed_texts_cached`.

    Args:
        embeddings (`np.ndarray` of float32, shape `(len(texts), dim)`): unit rows in input order.
        path (`Path`): the cache entry.
        seconds (`float`): the time spent embedding now (0 on a cache hit).
        from_cache (`bool`): whether the entry was read rather than computed.
        embed_seconds (`float`, *optional*): the time it took to compute the entry (now, or as recorded beside the
            entry when it was written; `None` if unknown).
    """

    embeddings: np.ndarray
    path: Path
    seconds: float
    from_cache: bool
    embed_seconds: float | None = None


def cache_path(cache_dir: str | os.PathLike, fingerprint: str, texts: Sequence[str]) -> Path:
    """The entry for (encoder fingerprint, texts): ``<cache_dir>/<fingerprint[:16]>-<texts digest[:16]>.npy``."""
    return Path(cache_dir) / f"{fingerprint.removeprefix('sha256:')[:16]}-{texts_digest(texts)[:16]}.npy"


def embed_texts_cached(
    encoder: Any,
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None,
    batch_size: int = 32,
    normalize: bool = True,
) -> CachedEmbeddings:
    """``encoder.encode(texts)``, read from / written to ``cache_dir`` (no cache when ``cache_dir`` is ``None``).

    Args:
        encoder: anything with ``fingerprint``, ``embedding_dim`` and ``encode(texts, batch_size, normalize)`` (a
            :class:`~bt2_hf.backbones.sentence_encoder.SentenceEncoder`).
        texts (`Sequence[str]`): the texts, in the order of the rows returned.
        cache_dir (`str` or `os.PathLike`, *optional*): the cache folder.
        batch_size (`int`, *optional*, defaults to 32): passed to ``encode``.
        normalize (`bool`, *optional*, defaults to `True`): return unit rows (else the raw pooled features).
    """
    texts = list(texts)
    expected = (len(texts), encoder.embedding_dim)
    path = cache_path(cache_dir, encoder.fingerprint, texts) if cache_dir is not None else Path(os.devnull)
    if cache_dir is not None and path.is_file():
        try:
            cached = load_npy(path, "cached embeddings")
            if cached.shape == expected and cached.dtype == np.float32 and np.isfinite(cached).all():
                output = _normalized(cached) if normalize else cached
                return CachedEmbeddings(output, path, 0.0, True, _recorded_seconds(path))
            logger.warning("Cache entry %s has shape %s (expected %s); recomputing it.", path, cached.shape, expected)
        except BT2InputError as error:
            logger.warning("Unreadable cache entry (%s); recomputing it.", error)
    start = time.perf_counter()
    embeddings = np.ascontiguousarray(encoder.encode(texts, batch_size=batch_size, normalize=False), np.float32)
    seconds = time.perf_counter() - start
    if embeddings.shape != expected:
        raise ValueError(
            f"The encoder returned shape {embeddings.shape} for {expected[0]} texts; expected {expected}."
        )
    if cache_dir is not None:
        buffer = io.BytesIO()
        np.save(buffer, embeddings, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
        atomic_write_json(path.with_suffix(".json"), {"rows": len(texts), "seconds": seconds})
    output = _normalized(embeddings) if normalize else embeddings
    return CachedEmbeddings(output, path, seconds, False, seconds)


def _recorded_seconds(path: Path) -> float | None:
    try:
        value = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _normalized(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


__all__ = ["CachedEmbeddings", "cache_path", "embed_texts_cached", "texts_digest"]
