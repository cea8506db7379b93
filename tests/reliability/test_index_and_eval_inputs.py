"""`bt2 index` never overwrites or cuts silently (issue 11, repro 4); clear errors, no empty folders (repro 8)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from bt2_hf.cli import eval as eval_cli
from bt2_hf.cli import index as index_cli
from bt2_hf.galleries import FaissGallery, GalleryError

FP = "sha256:" + "a" * 64


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _config(path, dim, fingerprint=FP, **extra):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"fingerprint": fingerprint, "embedding_dim": dim, **extra}))
    return str(path)


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def gallery(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g64.npy", _unit(rng, 200, 64))
    np.save(tmp_path / "g80.npy", _unit(rng, 200, 80))
    encoder = _config(tmp_path / "enc64", 64)
    output = tmp_path / "gallery"
    argv = ["build", "--embeddings", str(tmp_path / "g64.npy"), "--encoder-config", encoder, "--output", str(output)]
    assert index_cli.main(argv) == 0
    return tmp_path, output, encoder


def test_build_refuses_an_existing_gallery_and_a_wrong_width(gallery, capsys):
    tmp_path, output, encoder = gallery
    before = _snapshot(output)
    other = ["--embeddings", str(tmp_path / "g80.npy"), "--encoder-config", encoder, "--output", str(output)]
    assert index_cli.main(["build", *other]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert index_cli.main(["build", *other, "--overwrite"]) == 2  # 80-d embeddings, 64-d encoder
    assert "80-d" in capsys.readouterr().err
    assert _snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir() if ".bt2-" in p.name) == []
    # With --overwrite and matching widths the gallery is replaced.
    assert index_cli.main(["build", "--embeddings", str(tmp_path / "g64.npy"), "--encoder-config", encoder,
                           "--output", str(output), "--overwrite", "--index-type", "hnsw"]) == 0  # fmt: skip
    assert FaissGallery.open(output).manifest["index"]["type"] == "hnsw"


def test_search_refuses_queries_of_another_width_and_k_0(gallery, capsys):
    tmp_path, output, encoder = gallery
    search = ["search", "--index", str(output), "--queries", str(tmp_path / "g80.npy"), "--query-config", encoder]
    assert index_cli.main(search) == 2
    assert "80-d" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        index_cli.main(search[:-2] + ["--query-config", encoder, "-k", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    index = FaissGallery.open(output)
    queries = np.load(tmp_path / "g80.npy")
    with pytest.raises(ValueError, match="80-d"):
        index.search(queries, check_compatibility=False)  # no silent prefix cut
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries[:, :64], k=0, check_compatibility=False)
    config = SimpleNamespace(fingerprint=FP, embedding_dim=64, compatible_with=[], name_or_path="enc")
    with pytest.raises(ValueError, match="80-d"):
        index.search(queries, query_config=config)


def test_config_without_embedding_dim_names_the_file(gallery, capsys):
    tmp_path, output, _ = gallery
    (tmp_path / "nodim").mkdir()
    (tmp_path / "nodim" / "config.json").write_text(json.dumps({"fingerprint": FP}))
    argv = ["search", "--index", str(output), "--queries", str(tmp_path / "g64.npy"), "--query-config"]
    assert index_cli.main([*argv, str(tmp_path / "nodim")]) == 2
    err = capsys.readouterr().err
    assert "embedding_dim" in err and str(tmp_path / "nodim" / "config.json") in err


def test_duplicate_ids_are_refused(gallery, capsys):
    tmp_path, _, encoder = gallery
    ids = np.arange(200)
    ids[5] = 4
    np.savez(tmp_path / "dup.npz", embeddings=np.load(tmp_path / "g64.npy"), ids=ids)
    argv = ["build", "--embeddings", str(tmp_path / "dup.npz"), "--encoder-config", encoder, "--output"]
    assert index_cli.main([*argv, str(tmp_path / "dup")]) == 2
    assert "duplicate id 4" in capsys.readouterr().err and not (tmp_path / "dup").exists()
    with pytest.raises(GalleryError, match="unique"):
        FaissGallery.build(tmp_path / "dup", np.load(tmp_path / "g64.npy"), ids.tolist(), encoder={"fingerprint": FP})


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: np.savez(p), "holds no arrays"),
        (lambda p: p.write_bytes(b"PK\x03\x04garbage"), "cannot read"),
    ],
    ids=["0-byte", "empty-npz", "garbage"],
)
def test_bad_embedding_files_are_clear_errors_and_eval_writes_no_folder(tmp_path, capsys, write, message):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "old.npz", embeddings=_unit(rng, 20, 8), labels=np.arange(20) % 4)
    bad = tmp_path / "bad.npz"
    write(bad)
    out = tmp_path / "out"
    assert eval_cli.main(["--embeddings", str(tmp_path / "old.npz"), str(bad), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "old.npz"]


def test_zero_byte_npy_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "g.npy").write_bytes(b"")
    encoder = _config(tmp_path / "enc", 8)
    argv = ["build", "--embeddings", str(tmp_path / "g.npy"), "--encoder-config", encoder, "--output"]
    assert index_cli.main([*argv, str(tmp_path / "gallery")]) == 2
    assert "g.npy" in capsys.readouterr().err
    assert not (tmp_path / "gallery").exists()
