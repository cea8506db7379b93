"""An alias table edited by someone else is refused: a target outside the gallery root, or a table that is not one."""

from __future__ import annotations

import json

import pytest

from bt2_hf.galleries.aliases import ALIASES_FILE, ALIASES_KIND, GalleryRoot
from bt2_hf.galleries.faiss_store import GalleryError


def _write(root, table) -> None:
    (root / ALIASES_FILE).write_text(json.dumps(table))


@pytest.mark.parametrize("target", ["../elsewhere", "/etc", "a/../../b", "sub/dir"])
def test_an_alias_edited_to_point_outside_the_root_is_refused(tmp_path, target):
    (tmp_path / "elsewhere").mkdir()
    root = tmp_path / "galleries"
    root.mkdir()
    _write(root, {"kind": ALIASES_KIND, "format": 1, "aliases": {"fashion": {"target": target}}, "history": []})
    with pytest.raises(GalleryError, match="Invalid gallery name"):
        GalleryRoot(root).resolve("fashion")


@pytest.mark.parametrize(
    "table",
    [
        {"kind": "something else", "aliases": {}},
        {"kind": ALIASES_KIND, "aliases": ["fashion"]},
        {"kind": ALIASES_KIND, "aliases": {"fashion": {"target": 3}}},
        [1, 2, 3],
    ],
)
def test_a_table_that_is_not_an_alias_table_is_refused_by_name(tmp_path, table):
    _write(tmp_path, table)
    with pytest.raises(GalleryError, match="not a valid alias table"):
        GalleryRoot(tmp_path).resolve("fashion")
