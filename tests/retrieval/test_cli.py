from __future__ import annotations

import json

import numpy as np

from bt2_hf.cli import eval as eval_cli
from bt2_hf.cli import index as index_cli

from .conftest import quantized_unit_vectors


def _write_pair(rng, tmp_path):
    labels = rng.integers(0, 4, 40)
    old = quantized_unit_vectors(rng, 40, 16)
    new = quantized_unit_vectors(rng, 40, 64)
    new[:, :16] = old / 2
    np.savez(tmp_path / "old.npz", embeddings=old, labels=labels)
    np.savez(tmp_path / "new.npz", embeddings=new, labels=labels)
    np.savez(tmp_path / "v3.npz", embeddings=quantized_unit_vectors(rng, 40, 64), labels=labels)
    return old, new, labels


def test_eval_pair_with_backfill_writes_json_and_plots(rng, tmp_path):
    _write_pair(rng, tmp_path)
    out = tmp_path / "out"
    argv = ["--embeddings", str(tmp_path / "old.npz"), str(tmp_path / "new.npz"), "--metrics", "top1,map"]
    assert eval_cli.main(argv + ["--backfill", "--betas", "0,0.5,1", "--output-dir", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["pair"]["results"]) == {"old/old", "new/old", "new/new"}
    # new's prefix is exactly old, so new/old equals old/old and the strict criterion fails
    assert report["pair"]["results"]["new/old"] == report["pair"]["results"]["old/old"]
    assert report["pair"]["criterion"] == {"top1": False, "map": False}
    backfill = report["backfill"][0]
    assert backfill["values"]["map"][0] == report["pair"]["results"]["new/old"]["map"]
    assert backfill["values"]["map"][-1] == report["pair"]["results"]["new/new"]["map"]
    assert (out / "backfill_map.png").stat().st_size > 0


def test_eval_matrix(rng, tmp_path):
    _write_pair(rng, tmp_path)
    files = [str(tmp_path / f"{name}.npz") for name in ("old", "new", "v3")]
    out = tmp_path / "out"
    assert eval_cli.main(["--embeddings", *files, "--metrics", "top1", "--output-dir", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["matrix"]["names"] == ["old", "new", "v3"]
    assert report["matrix"]["matrix"]["top1"][0][1] is None
    assert (out / "matrix_top1.png").stat().st_size > 0


def test_eval_bad_input_is_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.eye(3, dtype=np.float32))
    assert eval_cli.main(["--embeddings", str(tmp_path / "a.npy"), str(tmp_path / "a.npy")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_index_build_and_search(rng, tmp_path, capsys):
    old, new, _ = _write_pair(rng, tmp_path)
    (tmp_path / "old_model").mkdir()
    (tmp_path / "old_model" / "config.json").write_text(json.dumps({"fingerprint": "a" * 64, "embedding_dim": 16}))
    new_config = {
        "fingerprint": "b" * 64,
        "embedding_dim": 64,
        "compatible_with": [{"fingerprint": "a" * 64, "embedding_dim": 16, "name_or_path": "old_model"}],
        "training": {"trained_against": {"name_or_path": "old_model", "fingerprint": "a" * 64, "prefix_dim": 16}},
    }
    (tmp_path / "new_config.json").write_text(json.dumps(new_config))
    index_dir = tmp_path / "index"
    build = ["build", "--embeddings", str(tmp_path / "old.npz"), "--encoder-config", str(tmp_path / "old_model")]
    assert index_cli.main(build + ["--output", str(index_dir)]) == 0
    np.save(tmp_path / "queries.npy", new[:3])
    search = ["search", "--index", str(index_dir), "--queries", str(tmp_path / "queries.npy"), "-k", "2"]
    new_search = search + [
        "--query-config",
        str(tmp_path / "new_config.json"),
        "--output",
        str(tmp_path / "hits.json"),
    ]
    # Trained against the old model but never measured: refused, with the command that would measure it.
    capsys.readouterr()
    assert index_cli.main(new_search) == 2
    assert "bt2 verify" in capsys.readouterr().err and not (tmp_path / "hits.json").exists()
    assert index_cli.main(new_search + ["--allow_unmeasured"]) == 0
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert hits["prefix_dim"] == 16 and [h["ids"][0] for h in hits["results"]] == [0, 1, 2]
    assert hits["admission"]["overridden"] is True and hits["admission"]["basis"] == "unmeasured_override"
    (tmp_path / "stranger.json").write_text(json.dumps({"fingerprint": "c" * 64, "embedding_dim": 64}))
    capsys.readouterr()
    assert index_cli.main(search + ["--query-config", str(tmp_path / "stranger.json")]) == 2
    assert "unrelated" in capsys.readouterr().err
