"""The galleries of a root folder, listed again only when the folder changed: built, removed and copied-in galleries
are seen at once, and an unchanged root is answered without reading its manifests."""

from __future__ import annotations

import shutil

import numpy as np

import bt2_hf.galleries.aliases as aliases_module
from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.aliases import GalleryRoot

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 8}


def build(path) -> None:
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    FaissGallery.build(path, vectors, list(range(20)), encoder=ENCODER)


def test_the_listing_follows_the_folder_and_an_unchanged_folder_reads_no_manifest(tmp_path, monkeypatch):
    root = GalleryRoot(tmp_path)
    assert root.galleries() == []
    build(tmp_path / "shoes")
    assert root.galleries() == ["shoes"]
    build(tmp_path / "bags")
    assert root.galleries() == ["bags", "shoes"]
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
