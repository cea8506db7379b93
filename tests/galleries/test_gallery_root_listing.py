"""The galleries of a root folder, listed again only when the folder changed: built, removed and copied-in galleries
are seen at once, and an unchanged root is answered without reading its manifests."""

from __future__ import annotations

import os
import shutil

import numpy as np

import bt2_hf.galleries.aliases as aliases_module
from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.aliases import LISTING_SETTLE_SECONDS, GalleryRoot

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 8}


def build(path) -> None:
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    FaissGallery.build(path, vectors, list(range(20)), encoder=ENCODER)


def settle(root) -> None:
    """Date the root's last change back past the settling time, as if the listing came a while after it."""
    stat = os.stat(root)
    past = stat.st_mtime_ns - int(2 * LISTING_SETTLE_SECONDS * 1e9)
    os.utime(root, ns=(past, past))


def test_the_listing_follows_the_folder_and_an_unchanged_folder_reads_no_manifest(tmp_path, monkeypatch):
    root = GalleryRoot(tmp_path)
    assert root.galleries() == []
    build(tmp_path / "shoes")
    assert root.galleries() == ["shoes"]
    build(tmp_path / "bags")
    assert root.galleries() == ["bags", "shoes"]
    settle(tmp_path)
    assert root.galleries() == ["bags", "shoes"]  # listed once more after the change, then kept
    reads = []
    real = aliases_module.is_gallery_directory
    monkeypatch.setattr(aliases_module, "is_gallery_directory", lambda path: reads.append(path) or real(path))
    for _ in range(3):
        assert root.galleries() == ["bags", "shoes"]
    assert reads == []  # answered from the listing kept
    shutil.rmtree(tmp_path / "shoes")
    assert root.galleries() == ["bags"]
    # a gallery copied in file by file: its folder appears before its manifest, which changes nothing in the root
    (tmp_path / "hats").mkdir()
    assert root.galleries() == ["bags"]
    for part in (tmp_path / "bags").iterdir():
        shutil.copy(part, tmp_path / "hats" / part.name)
    assert root.galleries() == ["bags", "hats"]


def test_a_gallery_renamed_in_within_one_tick_of_the_files_clock_is_seen(tmp_path):
    """The attack on the listing's key: a build renames its staging folder into the root in the same tick of the
    file clock as the listing before it, so the root's time and link count read as before."""
    root = GalleryRoot(tmp_path)
    build(tmp_path / "bags")
    build(tmp_path / ".hats-staging")  # hidden: a build's staging folder, not listed
    assert root.galleries() == ["bags"]
    before = os.stat(tmp_path)
    (tmp_path / ".hats-staging").rename(tmp_path / "hats")
    os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick
    assert (os.stat(tmp_path).st_mtime_ns, os.stat(tmp_path).st_nlink) == (before.st_mtime_ns, before.st_nlink)
    assert root.galleries() == ["bags", "hats"]
