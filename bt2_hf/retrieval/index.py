"""A gallery on disk: embedding shards, a faiss index, and a manifest that says which encoder wrote it.

Layout of a saved index directory (written atomically, so a reader never sees half of it)::

    index.faiss      the serialised faiss index
    manifest.json    encoder fingerprint and name, dimension, normalisation, count, ids, index type,
                     bt2_hf version and the sha256 of index.faiss (corruption is detected on load)

Searching checks the query model against the manifest with :func:`bt2_hf.compatibility.admit_query_model`: the
query embedding is cut to the prefix of a measured, passing compatibility entry and re-normalised; any other model is
refused with an error naming both models and the ``bt2 verify`` command that would measure them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError
from ..utils.io import atomic_directory, atomic_write_json
from ..utils.readers import check_embeddings, check_unique_ids, load_npy, read_json
from .knn import FaissHNSWKNN, FaissIVFKNN, import_faiss
from .protocol import as_embedding_array, l2_normalize, truncate

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.faiss"
MANIFEST_FORMAT = 1
INDEX_TYPES = ("flat", "ivf", "hnsw")
SHARD_PATTERN = "embeddings-rank{rank:03d}-{shard:05d}.npy"


class GalleryIndexError(BT2InputError):
    """A gallery index on disk is missing, corrupted, or inconsistent with its manifest."""


def _query_model_fingerprint(model) -> str | None:
    """The fingerprint a query or gallery model may claim: the verified one of the weights it holds now.

    A :class:`~bt2_hf.BT2Model` changed in memory since it was loaded or saved (or never saved) has none, so its
    ``config.fingerprint`` is not trusted; other models (duck-typed encoders) are taken at their config's word.
    """
    recorded = getattr(model.config, "fingerprint", None)
    if not hasattr(model, "verified_fingerprint"):
        return recorded
    verified = model.verified_fingerprint()
    if recorded and verified != recorded:
        from ..fingerprint import FingerprintMismatchError, short_fingerprint

        raise FingerprintMismatchError(
            f"The model {getattr(model.config, 'name_or_path', '') or '<unnamed>'} is not the checkpoint its "
            f"config.fingerprint {short_fingerprint(recorded)} names: its weights or processor were changed in memory "
            "since it was loaded or saved (or it was loaded with verify_fingerprint=False). Save it with "
            "save_pretrained (a new fingerprint) and use the saved model, or reload the original."
        )
    return verified


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bt2_version() -> str:
    from .. import __version__

    return __version__


# -- shards: embed a dataset in batches, one set of files per process ---------------------------------------------------


def write_embedding_shards(
    embeddings,
    ids: Sequence,
    directory: str | os.PathLike,
    rank: int = 0,
    shard_size: int = 100_000,
    start_shard: int = 0,
) -> list[Path]:
    """Write embeddings as ``.npy`` shards with a ``.ids.json`` beside each; every process (rank) has its own files.

    Args:
        embeddings (`np.ndarray` or `torch.Tensor` of shape `(n, d)`): the vectors.
        ids (`Sequence`): one JSON-serialisable id per row.
        directory (`str` or `os.PathLike`): where the shards go.
        rank (`int`, *optional*, defaults to `0`): the writing process; ranks never write the same file.
        shard_size (`int`, *optional*, defaults to `100000`): rows per shard.
        start_shard (`int`, *optional*, defaults to `0`): number of the first shard (to append batches).

    Returns:
        `list[Path]`: the shard files written.
    """
    embeddings = as_embedding_array(embeddings)
    ids = list(ids)
    if len(ids) != embeddings.shape[0]:
        raise ValueError(f"{len(ids)} ids for {embeddings.shape[0]} embeddings: give one id per row.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for offset, start in enumerate(range(0, embeddings.shape[0], shard_size)):
        path = directory / SHARD_PATTERN.format(rank=rank, shard=start_shard + offset)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings[start : start + shard_size])
        os.replace(tmp, path)
        atomic_write_json(path.with_suffix(".ids.json"), ids[start : start + shard_size])
        written.append(path)
    return written


def read_embedding_shards(directory: str | os.PathLike) -> tuple[np.ndarray, list]:
    """Concatenate all shards of a directory, ordered by rank then shard number.

    Returns:
        `tuple[np.ndarray, list]`: embeddings ``(N, d)`` and their ids.
    """
    paths = sorted(Path(directory).glob("embeddings-rank*-*.npy"))
    if not paths:
        raise FileNotFoundError(f"No embedding shards (embeddings-rank*-*.npy) in {directory}.")
    arrays, ids = [], []
    for path in paths:
        array = check_embeddings(load_npy(path, "embedding shard"), path)
        if arrays and array.shape[1] != arrays[0].shape[1]:
            raise GalleryIndexError(
                f"Shard {path} holds {array.shape[1]}-d embeddings but {paths[0].name} holds {arrays[0].shape[1]}-d: "
                "the shards come from different models; re-run the embedding step into an empty directory."
            )
        arrays.append(array)
        ids_path = path.with_suffix(".ids.json")
        if not ids_path.exists():
            raise GalleryIndexError(f"Shard {path} has no ids file {ids_path.name}; re-run the embedding step.")
        shard_ids = read_json(ids_path, "shard ids file")
        if not isinstance(shard_ids, list) or len(shard_ids) != len(array):
            raise GalleryIndexError(
                f"{ids_path} must list one id per row of {path.name} ({len(array)}); re-run the embedding step."
            )
        ids.extend(shard_ids)
    return np.concatenate(arrays), check_unique_ids(ids, directory, "shard ids")


def embed_to_shards(
    model,
    inputs: Sequence,
    ids: Sequence,
    directory: str | os.PathLike,
    modality: str = "images",
    batch_size: int = 64,
    device=None,
    shard_size: int = 100_000,
    show_progress: bool = True,
) -> list[Path]:
    """Embed a dataset with a model and write shards; under ``accelerate launch`` each process embeds its share.

    A thin wrapper: it splits ``inputs`` between processes (``accelerate.PartialState``, when accelerate is
    installed), calls ``model.encode`` in shards of ``shard_size`` items and writes them with
    :func:`write_embedding_shards`. Build the index afterwards (on one process) with :meth:`GalleryIndex.from_shards`.

    Args:
        model (`BT2Model`): anything with ``encode(images=... | texts=..., batch_size, device, show_progress)``.
        inputs (`Sequence`): images (PIL / arrays) or texts.
        ids (`Sequence`): one id per input.
        directory (`str` or `os.PathLike`): the shard directory.
        modality (`str`, *optional*, defaults to `"images"`): ``"images"`` or ``"texts"``.
        batch_size (`int`, *optional*, defaults to `64`): inputs per forward pass.
        device (`str` or `torch.device`, *optional*): where to run the model.
        shard_size (`int`, *optional*, defaults to `100000`): items per shard file.
        show_progress (`bool`, *optional*, defaults to `True`): progress bar on the main process only.
    """
    if modality not in {"images", "texts"}:
        raise ValueError(f"modality must be 'images' or 'texts', got {modality!r}.")
    if len(inputs) != len(ids):
        raise ValueError(f"{len(inputs)} inputs but {len(ids)} ids: give one id per input.")
    rank, world, is_main = 0, 1, True
    try:
        from accelerate import PartialState

        state = PartialState()
        rank, world, is_main = state.process_index, state.num_processes, state.is_main_process
        device = device or state.device
    except ModuleNotFoundError:
        pass
    # Contiguous blocks per rank keep the global order (rank 0's items first) when the shards are read back.
    per_rank = (len(inputs) + world - 1) // world
    lo, hi = rank * per_rank, min(len(inputs), (rank + 1) * per_rank)
    written = []
    for shard, start in enumerate(range(lo, hi, shard_size)):
        stop = min(start + shard_size, hi)
        batch = list(inputs[start:stop])
        embeddings = model.encode(
            **{modality: batch}, batch_size=batch_size, device=device, show_progress=show_progress and is_main
        )
        written += write_embedding_shards(embeddings, list(ids[start:stop]), directory, rank, shard_size, shard)
    return written


# -- the index ---------------------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """Neighbours of each query: ``ids[i]`` and ``scores[i]`` (cosine), best first; ``indices`` are gallery rows;
    ``admission`` says why the query model was allowed (``basis``: same_model, measured, lineage,
    unmeasured_override or unchecked; ``overridden`` when ``allow_unmeasured`` was needed)."""

    ids: list[list]
    scores: np.ndarray
    indices: np.ndarray
    prefix_dim: int
    admission: dict | None = None


class GalleryIndex:
    """A searchable gallery with the identity of the encoder that embedded it.

    Build with :meth:`build` (from embeddings) or :meth:`from_shards`, write with :meth:`save`, read with :meth:`load`
    (which verifies the index file against the manifest's sha256), search with :meth:`search` (embeddings + the query
    model's config) or :meth:`search_with_model`.

    >>> import numpy as np
    >>> from bt2_hf.retrieval.index import GalleryIndex
    >>> gallery = np.eye(4, dtype=np.float32)
    >>> index = GalleryIndex.build(gallery, ids=["a", "b", "c", "d"], encoder_fingerprint="f" * 64, encoder_name="old")
    >>> index.search(gallery[:1], k=1, check_compatibility=False).ids
    [['a']]
    """

    def __init__(self, faiss_index, manifest: dict[str, Any]):
        self.faiss_index = faiss_index
        self.manifest = manifest

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def ids(self) -> list:
        return self.manifest["ids"]

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @classmethod
    def build(
        cls,
        embeddings,
        ids: Sequence | None = None,
        *,
        encoder_fingerprint: str | None,
        encoder_name: str | None = None,
        normalize: bool = True,
        index_type: str = "flat",
        encoder_dim: int | None = None,
        **index_kwargs,
    ) -> GalleryIndex:
        """Build an index from gallery embeddings.

        Args:
            embeddings (`np.ndarray` or `torch.Tensor` of shape `(N, d)`): the gallery vectors.
            ids (`Sequence`, *optional*): one JSON-serialisable id per row; defaults to ``0..N-1``.
            encoder_fingerprint (`str`): ``model.config.fingerprint`` of the encoder (checked at search time).
            encoder_name (`str`, *optional*): ``model.config.name_or_path``, for messages.
            normalize (`bool`, *optional*, defaults to `True`): L2-normalise the rows (cosine search).
            index_type (`str`, *optional*, defaults to `"flat"`): ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``
                (approximate; keyword arguments go to :class:`FaissIVFKNN` / :class:`FaissHNSWKNN`).
            encoder_dim (`int`, *optional*): the encoder's ``embedding_dim``; embeddings of another width are refused
                (they were not made by that encoder).
        """
        embeddings = as_embedding_array(embeddings, "gallery embeddings")
        if encoder_dim is not None and embeddings.shape[1] != encoder_dim:
            raise ValueError(
                f"The gallery embeddings are {embeddings.shape[1]}-d but their encoder {encoder_name or ''} embeds "
                f"{encoder_dim}-d: they were not made by that encoder. Pass the embeddings and the config of the "
                "same model."
            )
        if normalize:
            embeddings = l2_normalize(embeddings)
        ids = list(range(embeddings.shape[0])) if ids is None else list(ids)
        if len(ids) != embeddings.shape[0]:
            raise ValueError(f"{len(ids)} ids for {embeddings.shape[0]} embeddings: give one id per row.")
        if len(set(map(json.dumps, ids))) != len(ids):
            raise ValueError("Gallery ids must be unique.")
        faiss = import_faiss()
        if index_type == "flat":
            faiss_index = faiss.IndexFlatIP(embeddings.shape[1])
            faiss_index.add(embeddings)
        elif index_type == "ivf":
            faiss_index = FaissIVFKNN(**index_kwargs).prepare(embeddings).handle
        elif index_type == "hnsw":
            faiss_index = FaissHNSWKNN(**index_kwargs).prepare(embeddings).handle
        else:
            raise ValueError(f"Unknown index_type {index_type!r}; choose one of {INDEX_TYPES}.")
        manifest = {
            "format": MANIFEST_FORMAT,
            "bt2_hf_version": _bt2_version(),
            "encoder_fingerprint": encoder_fingerprint,
            "encoder_name_or_path": encoder_name,
            "dimension": int(embeddings.shape[1]),
            "normalize": bool(normalize),
            "similarity": "cosine" if normalize else "inner_product",
            "count": int(embeddings.shape[0]),
            "ids": ids,
            "index_type": index_type,
            "index_file": INDEX_NAME,
        }
        return cls(faiss_index, manifest)

    @classmethod
    def from_shards(cls, directory: str | os.PathLike, **kwargs) -> GalleryIndex:
        """Build from the shards written by :func:`embed_to_shards` / :func:`write_embedding_shards` (all ranks)."""
        embeddings, ids = read_embedding_shards(directory)
        return cls.build(embeddings, ids, **kwargs)

    @classmethod
    def from_model(cls, model, inputs: Sequence, ids: Sequence | None = None, modality: str = "images", **kwargs):
        """Embed ``inputs`` with ``model`` (one process) and build an index carrying the model's fingerprint."""
        fingerprint = _query_model_fingerprint(model)  # refuse a model changed in memory before embedding
        embeddings = model.encode(**{modality: list(inputs)}, batch_size=kwargs.pop("batch_size", 64))
        return cls.build(
            embeddings,
            ids,
            encoder_fingerprint=fingerprint,
            encoder_name=getattr(model.config, "name_or_path", None),
            encoder_dim=getattr(model.config, "embedding_dim", None),
            **kwargs,
        )

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``index.faiss`` and ``manifest.json`` atomically (a staging directory swapped into place).

        Args:
            directory (`str` or `os.PathLike`): the index directory.
            overwrite (`bool`, *optional*, defaults to `False`): replace an existing index there (the previous one
                stays whole until the new one is complete); without it an existing directory is refused.
        """
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise FileExistsError(
                f"{directory} already exists (a gallery index, {len(list(directory.iterdir()))} entries): pass "
                "overwrite=True (`bt2 index build --overwrite`) to replace it, or choose another directory."
            )
        faiss = import_faiss()
        data = faiss.serialize_index(self.faiss_index).tobytes()
        manifest = dict(self.manifest, index_sha256=_sha256(data))
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            (tmp / INDEX_NAME).write_bytes(data)
            atomic_write_json(tmp / MANIFEST_NAME, manifest)
        self.manifest = manifest
        logger.info(
            "Saved a %s index of %d items (%d-d) to %s", manifest["index_type"], len(self), self.dimension, directory
        )
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GalleryIndex:
        """Read an index and verify it: manifest fields, the index file's sha256, its size and dimension.

        Raises:
            `GalleryIndexError`: with what is wrong and what to do (rebuild the index).
        """
        directory = Path(directory)
        manifest_path, index_path = directory / MANIFEST_NAME, directory / INDEX_NAME
        if not manifest_path.exists() or not index_path.exists():
            raise GalleryIndexError(
                f"{directory} is not a bt2_hf gallery index (expected {MANIFEST_NAME} and {INDEX_NAME}); "
                "build one with `bt2 index build` or GalleryIndex.build(...).save(path)."
            )
        try:
            manifest = read_json(manifest_path, "gallery manifest")
        except BT2InputError as error:
            raise GalleryIndexError(f"{error}; rebuild the index.") from None
        if not isinstance(manifest, dict):
            raise GalleryIndexError(f"The manifest {manifest_path} is not a JSON object; rebuild the index.")
        required = (
            "format",
            "encoder_fingerprint",
            "dimension",
            "normalize",
            "count",
            "ids",
            "index_type",
            "index_sha256",
        )
        missing = [key for key in required if key not in manifest]
        if missing:
            raise GalleryIndexError(f"The manifest {manifest_path} lacks {missing}; rebuild the index.")
        if manifest["format"] != MANIFEST_FORMAT:
            raise GalleryIndexError(
                f"{manifest_path} has format {manifest['format']}, this bt2_hf reads format {MANIFEST_FORMAT}."
            )
        for key, kind in (("dimension", int), ("count", int), ("ids", list), ("normalize", bool)):
            value = manifest[key]
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
                raise GalleryIndexError(
                    f"The manifest {manifest_path} has an invalid {key!r} ({value!r}); rebuild the index."
                )
        try:
            check_unique_ids(manifest["ids"], manifest_path)
        except BT2InputError as error:
            raise GalleryIndexError(f"{error} Rebuild the index with unique ids.") from None
        data = index_path.read_bytes()
        if _sha256(data) != manifest["index_sha256"]:
            raise GalleryIndexError(
                f"{index_path} does not match the sha256 recorded in its manifest: the file is corrupted or was "
                "replaced. Rebuild the index from the gallery embeddings (`bt2 index build`)."
            )
        faiss = import_faiss()
        try:
            faiss_index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as error:
            raise GalleryIndexError(
                f"{index_path} is not a readable faiss index ({error}); rebuild the index."
            ) from None
        if faiss_index.ntotal != manifest["count"] or len(manifest["ids"]) != manifest["count"]:
            raise GalleryIndexError(
                f"The manifest of {directory} says {manifest['count']} items with {len(manifest['ids'])} ids, the index "
                f"holds {faiss_index.ntotal}; rebuild the index."
            )
        if faiss_index.d != manifest["dimension"]:
            raise GalleryIndexError(
                f"The manifest of {directory} says {manifest['dimension']}-d, the index is {faiss_index.d}-d; rebuild it."
            )
        return cls(faiss_index, manifest)

    def admit(self, query_config, allow_unmeasured: bool = False):
        """The admission of a query model to this gallery (:func:`bt2_hf.compatibility.admit_query_model`): the
        prefix and its grounds; raises `IncompatibleModelsError` naming both models and the `bt2 verify` command."""
        from ..compatibility import admit_query_model

        return admit_query_model(
            query_config,
            self.manifest["encoder_fingerprint"],
            self.dimension,
            self.manifest.get("encoder_name_or_path"),
            allow_unmeasured=allow_unmeasured,
        )

    def prefix_for(self, query_config, allow_unmeasured: bool = False) -> int:
        """The query prefix length for this gallery, from the admission rule (raises if not admitted)."""
        return self.admit(query_config, allow_unmeasured).prefix_dim

    def search(
        self,
        query_embeddings,
        k: int = 10,
        query_config=None,
        check_compatibility: bool = True,
        allow_unmeasured: bool = False,
    ) -> SearchResult:
        """Search with query embeddings; the prefix rule is applied from the query model's config.

        Args:
            query_embeddings (`np.ndarray` or `torch.Tensor` of shape `(n, d_q)`): the queries.
            k (`int`, *optional*, defaults to `10`): neighbours per query.
            query_config (`BT2Config`, *optional*): the query model's config (``fingerprint``, ``embedding_dim``,
                ``compatible_with``); required unless ``check_compatibility=False``.
            check_compatibility (`bool`, *optional*, defaults to `True`): `False` skips the compatibility check (only
                for embeddings you know to be compatible); the queries must then have the gallery's width exactly.
            allow_unmeasured (`bool`, *optional*, defaults to `False`): admit a query model whose compatibility with
                the gallery's encoder is known but was never measured (logged, and recorded in
                ``SearchResult.admission``).

        Raises:
            `bt2_hf.compatibility.IncompatibleModelsError`: the query model is not compatible with the gallery.
        """
        queries = as_embedding_array(query_embeddings, "query_embeddings")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive number of neighbours, got {k!r}.")
        if check_compatibility:
            if query_config is None:
                raise ValueError(
                    "Pass query_config=model.config so that the index can check that the query model is compatible "
                    "with the gallery's encoder, or check_compatibility=False to compare prefixes unchecked."
                )
            admission = self.admit(query_config, allow_unmeasured).to_dict()
            prefix = admission["prefix_dim"]
            query_dim = getattr(query_config, "embedding_dim", None)
            if query_dim is not None and queries.shape[1] not in (query_dim, prefix):
                # The query model's full embeddings (cut here) or its compatible prefix (cut by the caller); any
                # other width comes from another model and would be cut silently.
                raise ValueError(
                    f"Query embeddings are {queries.shape[1]}-d but the query model "
                    f"{getattr(query_config, 'name_or_path', '') or ''} embeds {query_dim}-d (compatible prefix "
                    f"{prefix}): they were not made by that model. Pass the embeddings and the config of the same model."
                )
        else:
            prefix, admission = self.dimension, {"basis": "unchecked", "prefix_dim": self.dimension}
            if queries.shape[1] != prefix:
                raise ValueError(
                    f"Query embeddings are {queries.shape[1]}-d, the gallery is {prefix}-d; without the compatibility "
                    "check nothing is cut: pass query_config (the prefix rule) or queries of the gallery's width."
                )
        if queries.shape[1] < prefix:
            raise ValueError(
                f"Query embeddings are {queries.shape[1]}-d, narrower than the gallery's {prefix}-d prefix."
            )
        if prefix != self.dimension:
            raise ValueError(f"The compatible prefix ({prefix}) differs from the index dimension ({self.dimension}).")
        queries = truncate(queries, prefix, renormalize=self.manifest["normalize"])
        k = min(k, len(self))
        scores, indices = self.faiss_index.search(queries, k)
        # Same tie rule as the evaluator: descending score, then ascending gallery row.
        order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -scores), axis=-1)
        scores, indices = np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)
        ids = [[self.ids[i] for i in row if i >= 0] for row in indices]
        return SearchResult(ids, scores, indices, prefix, admission)

    def search_with_model(
        self, model, images=None, texts=None, k: int = 10, batch_size: int = 64, allow_unmeasured: bool = False
    ) -> SearchResult:
        """Embed queries with ``model.encode`` and search, checking ``model.config`` against the manifest first."""
        _query_model_fingerprint(model)  # the weights in memory must be those the config's fingerprint names
        self.admit(model.config, allow_unmeasured)  # refuse before spending time on encoding
        embeddings = model.encode(images=images, texts=texts, batch_size=batch_size)
        return self.search(embeddings, k=k, query_config=model.config, allow_unmeasured=allow_unmeasured)
