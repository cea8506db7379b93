"""Served names for faiss galleries: an alias file that cutover and rollback switch with one atomic rename.

A *gallery root* is a directory of gallery directories plus ``aliases.json``::

    {"kind": "bt2-gallery-aliases", "format": 1,
     "aliases": {"products": {"target": "products_v1", "standby": null}},
     "history": [{"action": "cutover", "alias": "products", "from": "products_v1", "to": "products_v1.3fa2…", …}]}

Clients (``bt2 serve``) name an alias, or a gallery directory of the root directly. ``cutover`` finalises a fully
backfilled gallery into a *new* directory (the new model's gallery; the old one is kept as it is, its backfill
included) and points the alias at it; the old directory becomes the alias's ``standby``. ``rollback`` swaps target
and standby back. Each switch is one rewrite of ``aliases.json`` (write to a temporary file, then rename), so a
reader sees the old or the new table, never half of one; every switch is appended to ``history``. Writers (the
service, the CLI) take an advisory lock on ``.aliases.lock`` around read-modify-write.

Names are plain: letters, digits, ``.``, ``_``, ``-``; never a path (``/``) or ``..``.

Milvus galleries switch with Milvus's own collection aliases instead (:class:`MilvusAliases`), the same way on a
milvus-lite file and on a server; :func:`open_gallery_root` picks one of the two for a location.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import time
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write_json
from .faiss_store import FaissGallery, GalleryError, is_gallery_directory
from .stores import is_milvus_uri

ALIASES_KIND = "bt2-gallery-aliases"
ALIASES_FILE = "aliases.json"
# A root changed this recently is listed again on every call: its modification time may not have ticked since.
LISTING_SETTLE_SECONDS = 2.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class GalleryNotFoundError(GalleryError):
    """No alias nor gallery directory of that name in the gallery root."""


def check_name(name) -> str:
    """``name`` if it is a plain gallery or alias name, else a `GalleryError` saying what names may be."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise GalleryError(
            f"Invalid gallery name {name!r}: use letters, digits, '.', '_' and '-' (at most 128), never a path "
            "separator or '..'."
        )
    return name


def finished_backfill(gallery, name: str, kind: str) -> dict:
    """The backfill state of a gallery whose every row was re-embedded (what a cutover switches to), else a refusal."""
    state = gallery.backfill_state
    if not state or state["done"] < len(gallery):
        done = state["done"] if state else 0
        raise GalleryError(f"{name} is backfilled {done}/{len(gallery)}: finish the backfill before the cutover (or "
                           f"name the {kind} to switch to).")  # fmt: skip
    return state


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class GalleryRoot:
    """A directory of galleries and the alias table that names the served one.

    Args:
        root (`str` or `os.PathLike`): the directory (must exist).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise GalleryError(f"{root} is not a directory: give the folder that holds the gallery directories.")
        if is_gallery_directory(self.root):
            raise GalleryError(f"{root} is a gallery: give the folder that holds it (move it into one, e.g. "
                               f"galleries/{self.root.name}), so that it can be named and switched.")  # fmt: skip
        self._cache: tuple[tuple, dict] | None = None
        self._listing: tuple[tuple, list[str]] | None = None
        self._path = self.root / ALIASES_FILE
        self._path_name = os.fspath(self._path)  # stat-ed on every served search: no Path arithmetic there

    @property
    def path(self) -> Path:
        return self._path

    # -- reading ---------------------------------------------------------------------------------------------------------

    def table(self) -> dict:
        """The alias table as it is on disk now (re-read only when the file was replaced)."""
        try:
            stat = os.stat(self._path_name)
        except FileNotFoundError:
            return {"kind": ALIASES_KIND, "format": 1, "aliases": {}, "history": []}
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._read())
        return self._cache[1]

    def _read(self) -> dict:
        from ..utils.readers import read_json

        table = read_json(self.path, "alias table")
        aliases = table.get("aliases") if isinstance(table, dict) else None
        if (
            not isinstance(table, dict)
            or table.get("kind") != ALIASES_KIND
            or not isinstance(aliases, dict)
            or not isinstance(table.get("history", []), list)
            or not all(
                isinstance(record, dict) and isinstance(record.get("target"), str) for record in aliases.values()
            )
        ):
            raise GalleryError("is not a valid alias table (kind, aliases, history): it was edited or damaged.",
                               self.path)  # fmt: skip
        return table

    def galleries(self) -> list[str]:
        """Names of the gallery directories in the root (hidden and staging folders left out).

        Listed again only when the root has changed: a service asks on every search that names no gallery, and each
        listing reads every gallery's manifest. A gallery enters or leaves a root as a directory created, renamed or
        removed, which changes the root's modification time and link count. A listing that met a folder that is not
        (yet) a gallery, one being copied in for instance, is not kept; nor is one of a root changed in the last
        ``LISTING_SETTLE_SECONDS``: file times tick coarsely (a few milliseconds on Linux, seconds elsewhere), so a
        build's rename of its staging folder in the same tick as the listing would leave the time and link count
        as they were.
        """
        stat = os.stat(self.root)
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_nlink)
        if self._listing is not None and self._listing[0] == key:
            return list(self._listing[1])
        settled = time.time_ns() - stat.st_mtime_ns > LISTING_SETTLE_SECONDS * 1e9
        folders = [p for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir()]
        names = sorted(p.name for p in folders if is_gallery_directory(p))
        self._listing = (key, names) if settled and len(names) == len(folders) else None
        return names

    def aliases(self) -> dict[str, dict]:
        return dict(self.table()["aliases"])

    def history(self, alias: str | None = None) -> list[dict]:
        return [entry for entry in self.table().get("history", []) if alias is None or entry.get("alias") == alias]

    def resolve(self, name: str) -> tuple[str | None, Path]:
        """``(alias or None, gallery directory)`` of a served name: an alias first, else a gallery directory."""
        check_name(name)
        record = self.table()["aliases"].get(name)
        if record is not None:
            return name, self.root / check_name(record["target"])
        if is_gallery_directory(self.root / name):
            return None, self.root / name
        known = sorted(self.table()["aliases"]) + self.galleries()
        raise GalleryNotFoundError(f"No gallery or alias named {name!r} in {self.root.name}; known: {known}.")

    def locate(self, name: str) -> tuple[str | None, str]:
        """``(alias or None, gallery directory's name)`` of a served name (see :meth:`resolve`)."""
        alias, directory = self.resolve(name)
        return alias, directory.name

    def open_store(self, name: str) -> FaissGallery:
        """The gallery directory ``name`` of the root, opened and verified."""
        return FaissGallery.open(self.root / check_name(name))

    def standby(self, alias: str) -> Path | None:
        """The directory an alias would roll back to, if any."""
        record = self.table()["aliases"].get(alias) or {}
        return self.root / record["standby"] if record.get("standby") else None

    # -- writing ---------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / ".aliases.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._cache = None
                yield self.table()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _commit(self, table: dict, entry: dict) -> dict:
        entry = {"date": _now(), **entry}
        table = dict(table, history=[*table.get("history", []), entry])
        atomic_write_json(self.path, table)  # the switch: one rename
        self._cache = None
        return entry

    def _gallery(self, name: str) -> FaissGallery:
        check_name(name)
        if not is_gallery_directory(self.root / name):
            raise GalleryNotFoundError(f"No gallery directory named {name!r} in {self.root}.")
        return FaissGallery.open(self.root / name, verify=False)

    def create_alias(self, alias: str, target: str, by: str = "cli") -> dict:
        """Point a new alias at a gallery directory of the root."""
        check_name(alias)
        if is_gallery_directory(self.root / alias):
            raise GalleryError(f"{alias!r} is a gallery directory of the root: give the alias another name.")
        encoder = self._gallery(target).encoder["fingerprint"]
        with self._locked() as table:
            if alias in table["aliases"]:
                raise GalleryError(f"The alias {alias!r} exists (→ {table['aliases'][alias]['target']}); switch it "
                                   "with cutover or rollback.")  # fmt: skip
            aliases = dict(table["aliases"], **{alias: {"target": target, "standby": None}})
            return self._commit(dict(table, aliases=aliases), {"action": "create", "alias": alias, "from": None,
                                                               "to": target, "to_encoder": encoder, "by": by})  # fmt: skip

    def cutover(self, alias: str, to: str | None = None, index_type: str | None = None, by: str = "cli") -> dict:
        """Switch an alias to the new model's gallery; the gallery it served becomes the standby (rollback target).

        Without ``to``: the served gallery must be fully backfilled; its standby is reused when it already is the
        backfill model's gallery (a cutover after a rollback), else the backfill is finalised into a new directory
        ``<served>.<12 hex digits of the new fingerprint>`` beside it (the served gallery is left unchanged).

        Returns:
            `dict`: the history entry written.
        """
        check_name(alias)
        record = self.table()["aliases"].get(alias)
        if record is None:
            raise GalleryNotFoundError(f"No alias {alias!r}: create it first (`bt2 gallery alias ROOT {alias} DIR`).")
        current = self._gallery(record["target"])
        if to is None:
            state = finished_backfill(current, record["target"], "gallery")
            new_fingerprint = state["model"]["fingerprint"]
            standby = record.get("standby")
            if standby and self._gallery(standby).encoder["fingerprint"] == new_fingerprint:
                to = standby
            else:
                to = f"{record['target']}.{new_fingerprint.split(':')[-1][:12]}"
                if (self.root / to).exists():
                    raise GalleryError(f"{self.root / to} exists but is not this alias's standby: move it away, or "
                                       f"name it explicitly (`--to {to}`).")  # fmt: skip
                current.finalize(index_type, directory=self.root / to)
        target = self._gallery(to)
        with self._locked() as table:
            live = table["aliases"].get(alias)
            if live is None or live["target"] != record["target"]:
                raise GalleryError(f"The alias {alias!r} was switched meanwhile (→ {live and live['target']}); retry.")
            aliases = dict(table["aliases"], **{alias: {"target": to, "standby": record["target"]}})
            return self._commit(dict(table, aliases=aliases), {
                "action": "cutover", "alias": alias, "from": record["target"], "to": to,
                "from_encoder": current.encoder["fingerprint"], "to_encoder": target.encoder["fingerprint"], "by": by,
            })  # fmt: skip

    def rollback(self, alias: str, by: str = "cli") -> dict:
        """Switch an alias back to its standby (the gallery it served before the last cutover)."""
        check_name(alias)
        with self._locked() as table:
            record = table["aliases"].get(alias)
            if record is None:
                raise GalleryNotFoundError(f"No alias {alias!r} in {self.root}.")
            if not record.get("standby"):
                raise GalleryError(f"The alias {alias!r} has nothing to roll back to (no cutover recorded).")
            source, target = self._gallery(record["target"]), self._gallery(record["standby"])
            aliases = dict(table["aliases"], **{alias: {"target": record["standby"], "standby": record["target"]}})
            return self._commit(dict(table, aliases=aliases), {
                "action": "rollback", "alias": alias, "from": record["target"], "to": record["standby"],
                "from_encoder": source.encoder["fingerprint"], "to_encoder": target.encoder["fingerprint"], "by": by,
            })  # fmt: skip


ALIAS_RECORD_KEY = "bt2.alias"


class MilvusAliases:
    """The same cutover and rollback for Milvus galleries, with Milvus's own collection aliases.

    ``create_alias`` / ``alter_alias`` switch an alias atomically on the server (milvus-lite supports them too).
    Milvus has no file to keep the history in, so each collection an alias points to carries the alias's record in
    its properties (``bt2.alias``: the alias, its standby, the history of its switches), copied forward at each switch.
    Collection names allow letters, digits and ``_``: the finalised collection is ``<served>__<12 hex digits>``.

    Args:
        uri (`str`): a milvus-lite file (``galleries.db``) or a server URI.
    """

    def __init__(self, uri: str):
        from .milvus_store import _client

        self.uri = str(uri)
        self.client = _client(self.uri)

    @property
    def location(self) -> str:
        return self.uri

    def galleries(self) -> list[str]:
        """Names of the bt2 gallery collections (a backfill's companion and a build's staging collection left out)."""
        from .milvus_store import MANIFEST_KEY

        names = []
        for name in sorted(self.client.list_collections()):
            if name.endswith(("__backfill", "__building")):
                continue
            if MANIFEST_KEY in (self.client.describe_collection(name).get("properties") or {}):
                names.append(name)
        return names

    def aliases(self) -> dict[str, dict]:
        """Every alias on the server: ``{alias: {"target": collection, "standby": collection or None}}``."""
        table = {}
        for alias in sorted(self.client.list_aliases().get("aliases") or []):
            table[alias] = {"target": self.resolve(alias), "standby": self.record(alias).get("standby")}
        return table

    def history(self, alias: str | None = None) -> list[dict]:
        """The switches of one alias, or of every alias, oldest first."""
        names = [alias] if alias is not None else list(self.aliases())
        entries = [entry for name in names for entry in self.record(name)["history"]]
        return sorted(entries, key=lambda entry: entry.get("date", ""))

    def standby(self, alias: str) -> str | None:
        """The collection an alias would roll back to, if any."""
        return self.record(alias).get("standby")

    def locate(self, name: str) -> tuple[str | None, str]:
        """``(alias or None, collection)`` of a served name: an alias first, else a bt2 gallery collection."""
        check_name(name)
        if name in (self.client.list_aliases().get("aliases") or []):
            return name, self.resolve(name)
        if self.client.has_collection(name) and name in self.galleries():
            return None, name
        known = sorted(self.client.list_aliases().get("aliases") or []) + self.galleries()
        raise GalleryNotFoundError(f"No gallery collection or alias named {name!r} at {self.uri}; known: {known}.")

    def open_store(self, name: str):
        """The gallery in collection ``name``."""
        from .milvus_store import MilvusGallery

        return MilvusGallery.open(self.uri, name, client=self.client)

    def resolve(self, alias: str) -> str:
        """The collection an alias points to."""
        try:
            return self.client.describe_alias(alias)["collection_name"]
        except Exception as error:  # pymilvus raises its own exception types for an unknown alias
            raise GalleryNotFoundError(f"No alias {alias!r} at {self.uri} ({error}).") from None

    def record(self, alias: str) -> dict:
        """The alias's record (standby, history) kept in the properties of the collection it points to."""
        import json

        properties = self.client.describe_collection(self.resolve(alias)).get("properties") or {}
        record = json.loads(properties.get(ALIAS_RECORD_KEY) or "{}")
        return record if record.get("alias") == alias else {"alias": alias, "standby": None, "history": []}

    def _switch(self, alias: str, collection: str, standby: str | None, entry: dict, create: bool = False) -> dict:
        import json

        entry = {"date": _now(), **entry}
        history = ([] if create else self.record(alias)["history"]) + [entry]
        record = {"alias": alias, "standby": standby, "history": history}
        # The record first (the target is not served yet), then the switch itself: one call on the server.
        self.client.alter_collection_properties(collection, properties={ALIAS_RECORD_KEY: json.dumps(record)})
        if create:
            self.client.create_alias(collection, alias)
        else:
            self.client.alter_alias(collection, alias)
        return entry

    def create_alias(self, alias: str, collection: str, by: str = "cli") -> dict:
        from .milvus_store import MilvusGallery

        encoder = MilvusGallery.open(self.uri, collection, client=self.client).encoder["fingerprint"]
        return self._switch(alias, collection, None, {"action": "create", "alias": alias, "from": None,
                                                      "to": collection, "to_encoder": encoder, "by": by}, create=True)  # fmt: skip

    def cutover(self, alias: str, to: str | None = None, index_type: str | None = None, by: str = "cli") -> dict:
        """Point the alias at the new model's collection (finalised from the served one's complete backfill into a
        new collection, the served one left as the standby), or at ``to``."""
        from .milvus_store import MilvusGallery

        served = self.resolve(alias)
        current = MilvusGallery.open(self.uri, served, client=self.client)
        if to is None:
            state = finished_backfill(current, served, "collection")
            standby = self.record(alias).get("standby")
            fingerprint = state["model"]["fingerprint"]
            if standby and self.client.has_collection(standby) and MilvusGallery.open(
                    self.uri, standby, client=self.client).encoder["fingerprint"] == fingerprint:  # fmt: skip
                to = standby
            else:
                to = f"{served}__{fingerprint.split(':')[-1][:12]}"
                rows = np.arange(len(current))
                MilvusGallery.build(self.uri, to, current.backfill_vectors(rows), current.ids_of(rows),
                                    encoder=state["model"], index_type=index_type or current.manifest["index"]["type"],
                                    dataset=current.manifest.get("dataset"))  # fmt: skip
        target = MilvusGallery.open(self.uri, to, client=self.client)
        return self._switch(alias, to, served, {
            "action": "cutover", "alias": alias, "from": served, "to": to,
            "from_encoder": current.encoder["fingerprint"], "to_encoder": target.encoder["fingerprint"], "by": by,
        })  # fmt: skip

    def rollback(self, alias: str, by: str = "cli") -> dict:
        from .milvus_store import MilvusGallery

        served, standby = self.resolve(alias), self.record(alias).get("standby")
        if not standby:
            raise GalleryError(f"The alias {alias!r} has nothing to roll back to (no cutover recorded).")
        source = MilvusGallery.open(self.uri, served, client=self.client)
        target = MilvusGallery.open(self.uri, standby, client=self.client)
        return self._switch(alias, standby, served, {
            "action": "rollback", "alias": alias, "from": served, "to": standby,
            "from_encoder": source.encoder["fingerprint"], "to_encoder": target.encoder["fingerprint"], "by": by,
        })  # fmt: skip


def open_gallery_root(location: str | os.PathLike) -> GalleryRoot | MilvusAliases:
    """The galleries at a location and their aliases: a folder of faiss gallery directories (:class:`GalleryRoot`),
    or a Milvus URI, a milvus-lite ``.db`` file or a server's ``http://host:port`` (:class:`MilvusAliases`).

    Both answer the same questions (``galleries``, ``aliases``, ``locate``, ``open_store``, ``standby``, ``history``)
    and switch aliases the same way (``create_alias``, ``cutover``, ``rollback``).
    """
    return MilvusAliases(str(location)) if is_milvus_uri(location) else GalleryRoot(location)
