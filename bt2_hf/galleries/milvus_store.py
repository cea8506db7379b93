"""A gallery in a Milvus collection (pymilvus): milvus-lite in a local file by default, a server or cluster by URI.

The collection holds one row per item: ``id`` (the gallery row, primary key), ``item_id`` (the item's id as text)
and ``vector`` (the encoder's unit vector). The manifest, the same one a faiss gallery writes, lives in the
collection's properties (``bt2.manifest``), so the encoder's fingerprint travels with the data and the same
compatibility rules refuse the same query models. A backfill adds a companion collection ``<name>__backfill`` with
``id``, ``rank`` (position in the backfill order) and ``vector`` (the new model's vector); the manifest's ``done``,
updated after each batch's upsert, says which ranks count, exactly as for faiss.

Index types: ``flat`` (FLAT), ``ivf`` (IVF_FLAT), ``hnsw`` (HNSW), ``ivfpq`` (IVF_PQ on a Milvus server; on milvus-lite
IVF_SQ8). Candidates of the compressed types are re-scored exactly from the stored vectors.

Where the gallery lives is one URI and one code path: a milvus-lite file (``galleries.db``), milvus-lite's own gRPC
server (``python -m milvus_lite server``, reached as ``http://host:port``) or a Milvus server or cluster
(``http://host:19530``). The URI does not say whether milvus-lite answers (a ``http://`` URI may be either), so the
one switch, :func:`is_lite`, asks the server for its version; it decides the two things milvus-lite does otherwise
(how an index build is awaited, and IVF_PQ).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..retrieval.protocol import l2_normalize
from .faiss_store import (
    GALLERY_FORMAT,
    GALLERY_KIND,
    GalleryError,
    ManifestAccessors,
    _sort,
    default_index_params,
)

logger = logging.getLogger(__name__)

MANIFEST_KEY = "bt2.manifest"
BATCH = 2048
QUERY_LIMIT = 16_384  # Milvus caps the rows one query returns


def _client(uri: str):
    """A pymilvus client of ``uri``; a server that does not answer is a `GalleryError` naming the URI."""
    from ..utils.imports import require

    pymilvus = require("pymilvus", extra="milvus")
    try:
        return pymilvus.MilvusClient(uri)
    except pymilvus.MilvusException as error:
        raise GalleryError(
            f"Cannot reach Milvus at {uri} ({error.message or type(error).__name__}): start the server, or check the "
            "URI (http://host:port for a server, a .db file path for milvus-lite)."
        ) from None


def is_lite(client) -> bool:
    """Whether ``client`` talks to milvus-lite: a local ``.db`` file, or milvus-lite's gRPC server over a URI.

    Asked from the server (its version reads ``milvus_lite-…``), not read from the URI: ``http://host:port`` is a
    Milvus server or cluster, or milvus-lite's own server, which lacks what milvus-lite files lack.
    """
    try:
        return str(client.get_server_version()).startswith("milvus_lite")
    except Exception:  # a server too old to say is not milvus-lite, which always says
        return False


def _create_index(client, collection: str, index_params, lite: bool) -> None:
    """Create ``collection``'s index; on a Milvus server, wait until it is built.

    pymilvus waits for an index by first asking the server for a timestamp (``AllocTimestamp``). milvus-lite (a file,
    or its gRPC server behind a URI: ``lite`` is :func:`is_lite`) does not implement that call: it logs a
    ``NotImplementedError`` traceback (pymilvus then ignores the error) although the build succeeds. milvus-lite
    builds an index synchronously when the collection is loaded and always reports it finished, so there is nothing
    to wait for: the call is skipped there rather than its log hidden.
    """
    client.create_index(collection, index_params, sync=not lite)


def _milvus_index(index_type: str, params: dict, lite: bool) -> tuple[str, dict]:
    """(Milvus index type, build params) for one of our index types."""
    if index_type == "flat":
        return "FLAT", {}
    if index_type == "hnsw":
        return "HNSW", {"M": params["M"], "efConstruction": params["ef_construction"]}
    if index_type == "ivfpq" and not lite:
        return "IVF_PQ", {"nlist": params["nlist"], "m": params["pq_m"], "nbits": params["pq_bits"]}
    return ("IVF_SQ8" if index_type == "ivfpq" else "IVF_FLAT"), {"nlist": params["nlist"]}


def _search_params(milvus_type: str, params: dict) -> dict:
    """The search params of the Milvus index the gallery was built with (recorded in its manifest)."""
    if milvus_type == "HNSW":
        return {"ef": params["ef_search"]}
    if milvus_type.startswith("IVF_"):
        return {"nprobe": params["nprobe"]}
    return {}


class MilvusGallery(ManifestAccessors):
    """A gallery in a Milvus collection, with the interface of :class:`~bt2_hf.galleries.FaissGallery`.

    >>> from bt2_hf.galleries.milvus_store import MilvusGallery
    >>> gallery = MilvusGallery.from_embeddings("galleries.db", "fashion", "gallery_embeddings/")  # doctest: +SKIP
    >>> search_gallery(gallery, queries, k=10, query_config=new_model.config)  # doctest: +SKIP
    """

    def __init__(self, client, uri: str, collection: str, manifest: dict):
        self.client, self.uri, self.collection, self.manifest = client, uri, collection, manifest
        self._id_type = manifest.get("id_type", "str")

    # -- building and opening -----------------------------------------------------------------------------------------

    @classmethod
    def build(cls, uri, collection, vectors, ids=None, *, encoder, index_type="flat", dataset=None, overwrite=False,
              **index_params) -> MilvusGallery:  # fmt: skip
        """Create the collection (under a temporary name, renamed when complete), insert, index and load it.

        Arguments as :meth:`FaissGallery.build`; ``uri`` is a milvus-lite path (``galleries.db``) or a server URI.
        """
        from pymilvus import DataType

        if not encoder.get("fingerprint"):
            raise GalleryError(
                "The encoder has no fingerprint: save it with save_pretrained before building a gallery."
            )
        client = _client(uri)
        if client.has_collection(collection):
            if not overwrite:
                raise FileExistsError(
                    f"Collection {collection!r} exists at {uri}; pass overwrite=True or another name."
                )
        chunks = [(vectors, ids)] if hasattr(vectors, "shape") else vectors
        staging = f"{collection}__building"
        for name in (staging, f"{staging}__backfill"):
            if client.has_collection(name):
                client.drop_collection(name)  # a build that crashed earlier
        count, dimension, id_types, schema_made = 0, None, set(), False
        for chunk_vectors, chunk_ids in chunks:
            chunk_vectors = l2_normalize(chunk_vectors)
            if not schema_made:
                dimension = chunk_vectors.shape[1]
                if encoder.get("embedding_dim") not in (None, dimension):
                    raise GalleryError(
                        f"The encoder embeds {encoder['embedding_dim']}-d vectors but {dimension}-d were given."
                    )
                schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field("item_id", DataType.VARCHAR, max_length=1024)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
                client.create_collection(staging, schema=schema)
                schema_made = True
            chunk_ids = (
                list(range(count, count + len(chunk_vectors))) if chunk_ids is None else np.asarray(chunk_ids).tolist()
            )
            if len(chunk_ids) != len(chunk_vectors):
                raise GalleryError(f"{len(chunk_ids)} ids for {len(chunk_vectors)} vectors: give one id per row.")
            id_types.update(type(i).__name__ for i in chunk_ids)
            for start in range(0, len(chunk_vectors), BATCH):
                client.insert(staging, [
                    {"id": count + start + j, "item_id": str(item), "vector": vector}
                    for j, (item, vector) in enumerate(zip(chunk_ids[start : start + BATCH], chunk_vectors[start : start + BATCH]))
                ])  # fmt: skip
            count += len(chunk_vectors)
        if count == 0:
            raise GalleryError("No vectors to build a gallery from.")
        params = default_index_params(index_type, count, dimension, **index_params)
        lite = is_lite(client)
        milvus_type, build_params = _milvus_index(index_type, params, lite)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type=milvus_type, metric_type="IP", params=build_params)
        _create_index(client, staging, index, lite)
        manifest = {
            "kind": GALLERY_KIND, "format": GALLERY_FORMAT, "store": "milvus", "encoder": dict(encoder),
            "dimension": int(dimension), "count": int(count), "dtype": "float32", "similarity": "cosine",
            "index": {"type": index_type, "params": params, "milvus_index": milvus_type}, "dataset": dataset,
            "id_type": "int" if id_types <= {"int"} else "str", "backfill": None,
        }  # fmt: skip
        client.alter_collection_properties(staging, properties={MANIFEST_KEY: json.dumps(manifest)})
        if client.has_collection(collection):
            client.drop_collection(collection)
            if client.has_collection(f"{collection}__backfill"):
                client.drop_collection(f"{collection}__backfill")
        client.rename_collection(staging, collection)
        return cls.open(uri, collection, client=client)

    @classmethod
    def from_embeddings(cls, uri, collection, embeddings, **kwargs) -> MilvusGallery:
        """Build from an :class:`~bt2_hf.galleries.EmbeddingDirectory`, shard by shard."""
        from .shards import EmbeddingDirectory

        embeddings = embeddings if isinstance(embeddings, EmbeddingDirectory) else EmbeddingDirectory(embeddings)
        return cls.build(uri, collection, embeddings.shards(), encoder=embeddings.manifest["model"],
                         dataset=embeddings.manifest["dataset"], **kwargs)  # fmt: skip

    @classmethod
    def open(cls, uri: str, collection: str, client=None) -> MilvusGallery:
        """Open a collection made by :meth:`build` and read its manifest from the collection's properties."""
        client = client or _client(uri)
        if not client.has_collection(collection):
            raise GalleryError(
                f"No collection {collection!r} at {uri}; build it with `bt2 index build --output {uri}`."
            )
        properties = client.describe_collection(collection).get("properties") or {}
        if MANIFEST_KEY not in properties:
            raise GalleryError(f"Collection {collection!r} at {uri} has no bt2 manifest: it is not a bt2_hf gallery.")
        manifest = json.loads(properties[MANIFEST_KEY])
        if manifest.get("kind") != GALLERY_KIND or manifest.get("format") != GALLERY_FORMAT:
            raise GalleryError(f"Collection {collection!r} holds a manifest this bt2_hf cannot read.")
        client.load_collection(collection)
        if manifest.get("backfill"):
            client.load_collection(f"{collection}__backfill")
        return cls(client, uri, collection, manifest)

    # -- the store interface -------------------------------------------------------------------------------------------

    @property
    def _backfill_collection(self) -> str:
        return f"{self.collection}__backfill"

    def _fetch(self, collection: str, rows, fields: list[str], extra: str = "") -> list[dict]:
        rows = [int(r) for r in np.unique(np.asarray(rows))]
        found = []
        for start in range(0, len(rows), QUERY_LIMIT):
            part = rows[start : start + QUERY_LIMIT]
            found += self.client.query(collection, filter=f"id in {part}{extra}", output_fields=["id", *fields])
        return found

    def ids_of(self, rows) -> list:
        rows = np.asarray(rows)
        by_row = {hit["id"]: hit["item_id"] for hit in self._fetch(self.collection, rows, ["item_id"])}
        cast = int if self._id_type == "int" else str
        return [cast(by_row[int(r)]) for r in rows]

    def vectors_at(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        by_row = {hit["id"]: hit["vector"] for hit in self._fetch(self.collection, rows, ["vector"])}
        return np.asarray([by_row[int(r)] for r in rows], dtype=np.float32).reshape(len(rows), self.dimension)

    def iter_vectors(self, chunk: int = QUERY_LIMIT):
        for start in range(0, len(self), chunk):
            rows = np.arange(start, min(len(self), start + chunk))
            yield rows, self.vectors_at(rows)

    def search_encoder_space(self, queries: np.ndarray, depth: int, **search_params) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` rows by cosine in the encoder's space; compressed indexes' candidates re-scored exactly."""
        index = self.manifest["index"]
        params = dict(index["params"], **{k: v for k, v in search_params.items() if v is not None})
        milvus_search = _search_params(index["milvus_index"], params)
        depth = min(depth, len(self))
        compressed = index["milvus_index"] in ("IVF_PQ", "IVF_SQ8")
        limit = min(len(self), max(depth, int(params.get("rerank") or depth))) if compressed else depth
        hits = self.client.search(self.collection, data=np.asarray(queries, np.float32).tolist(), limit=limit,
                                  anns_field="vector", search_params={"metric_type": "IP", "params": milvus_search})  # fmt: skip
        rows = np.full((len(queries), limit), -1, dtype=np.int64)
        scores = np.full((len(queries), limit), -np.inf, dtype=np.float32)
        for i, row_hits in enumerate(hits):
            for j, hit in enumerate(row_hits):
                rows[i, j], scores[i, j] = hit["id"], hit["distance"]
        if compressed:
            valid = rows >= 0
            vectors = self.vectors_at(rows[valid])
            query_of = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[valid]
            scores[valid] = np.einsum("nd,nd->n", vectors, np.asarray(queries, np.float32)[query_of])
        return _sort(scores, rows, depth)

    # -- backfill --------------------------------------------------------------------------------------------------------

    def start_backfill(self, state: dict, order: np.ndarray) -> None:
        """Create the backfill collection with every row's rank in the order (zero vectors until re-embedded)."""
        from pymilvus import DataType

        name = self._backfill_collection
        if self.client.has_collection(name):
            self.client.drop_collection(name)  # left by a crash before the manifest recorded it
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("rank", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=state["dimension"])
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        # Created, then indexed: create_collection(index_params=...) would wait for the index the way milvus-lite
        # cannot answer (see _create_index).
        self.client.create_collection(name, schema=schema)
        _create_index(self.client, name, index, is_lite(self.client))
        zero = [0.0] * state["dimension"]
        for start in range(0, len(order), BATCH):
            self.client.insert(name, [{"id": int(row), "rank": start + j, "vector": zero}
                                      for j, row in enumerate(order[start : start + BATCH])])  # fmt: skip
        self.client.load_collection(name)
        self._write_manifest(dict(self.manifest, backfill=state))

    def backfill_order(self) -> np.ndarray:
        done_rows = []
        for start in range(0, len(self), QUERY_LIMIT):
            done_rows += self.client.query(self._backfill_collection,
                                           filter=f"rank >= {start} and rank < {start + QUERY_LIMIT}",
                                           output_fields=["id", "rank"])  # fmt: skip
        order = np.empty(len(self), dtype=np.int64)
        for hit in done_rows:
            order[hit["rank"]] = hit["id"]
        return order

    def backfilled(self, rows) -> np.ndarray:
        done = self.backfill_state["done"]
        hits = self._fetch(self._backfill_collection, rows, [], extra=f" and rank < {done}")
        marked = {hit["id"] for hit in hits}
        return np.asarray([int(r) in marked for r in np.asarray(rows)], dtype=bool)

    def search_backfilled(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` re-embedded rows by cosine with the backfill model's vectors, best first (-1 pads)."""
        done = self.backfill_state["done"] if self.backfill_state else 0
        depth = min(depth, done)
        scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), depth), -1, dtype=np.int64)
        if depth == 0:
            return scores, rows
        hits = self.client.search(self._backfill_collection, data=np.asarray(queries, np.float32).tolist(),
                                  limit=depth, filter=f"rank < {done}", anns_field="vector",
                                  search_params={"metric_type": "IP"})  # fmt: skip
        for i, row_hits in enumerate(hits):
            for j, hit in enumerate(row_hits):
                rows[i, j], scores[i, j] = hit["id"], hit["distance"]
        return scores, rows

    def backfill_vectors(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        by_row = {hit["id"]: hit["vector"] for hit in self._fetch(self._backfill_collection, rows, ["vector"])}
        return np.asarray([by_row[int(r)] for r in rows], dtype=np.float32).reshape(len(rows), -1)

    def update_backfill_state(self, **changes) -> None:
        self._write_manifest(dict(self.manifest, backfill=dict(self.manifest["backfill"], **changes)))

    def write_backfill_batch(self, rows, vectors, done: int) -> None:
        """Upsert the new rows (one request), then record ``done`` in the collection's manifest (the commit point)."""
        state = self.manifest["backfill"]
        vectors = l2_normalize(vectors)
        first = done - len(rows)
        self.client.upsert(self._backfill_collection, [
            {"id": int(row), "rank": first + j, "vector": vector} for j, (row, vector) in enumerate(zip(rows, vectors))
        ])  # fmt: skip
        self.client.flush(self._backfill_collection)
        self._write_manifest(dict(self.manifest, backfill=dict(state, done=int(done))))

    def finalize(self, index_type: str | None = None, **index_params) -> MilvusGallery:
        """Rebuild the collection from the new model's rows; the encoder becomes the new model."""
        state = self.backfill_state
        rows = np.arange(len(self))
        ids = self.ids_of(rows)
        return MilvusGallery.build(
            self.uri, self.collection, self.backfill_vectors(rows), ids, encoder=state["model"],
            index_type=index_type or self.manifest["index"]["type"], dataset=self.manifest.get("dataset"),
            overwrite=True, **index_params,
        )  # fmt: skip

    def _write_manifest(self, manifest: dict) -> None:
        self.client.alter_collection_properties(self.collection, properties={MANIFEST_KEY: json.dumps(manifest)})
        self.manifest = manifest

    def search(self, queries, k: int = 10, query_config=None, **kwargs):
        from .mixed import search_gallery

        return search_gallery(self, queries, k=k, query_config=query_config, **kwargs)
