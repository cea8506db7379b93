"""A failed re-run of `bt2 demo` into an existing output directory leaves the previous run whole (issue 11, repro 3)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

import bt2_hf.training
from bt2_hf import BT2Model
from bt2_hf.cli.demo import main as demo_main
from bt2_hf.experiments.demo import DemoSize, run_demo
from bt2_hf.galleries import FaissGallery
from tests.conftest import write_fashion_like_idx


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".bt2-" in p.name)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    return write_fashion_like_idx(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, fashion_dir) -> Path:
    output = tmp_path_factory.mktemp("demo") / "out"
    run_demo(output, data_dir=fashion_dir, device="cpu", size=DemoSize.tiny())
    return output


@pytest.mark.slow
def test_crash_in_a_later_stage_keeps_the_previous_run(first_run, fashion_dir, monkeypatch):
    before = _snapshot(first_run)
    real_train, stages = bt2_hf.training.train, []

    def train_then_crash_in_the_bct_stage(*args, **kwargs):
        stages.append(args[2].output_dir)
        if len(stages) == 3:  # old and independent are already trained (and saved) by now
            raise RuntimeError("simulated crash in the BCT stage")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(bt2_hf.training, "train", train_then_crash_in_the_bct_stage)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_demo(first_run, data_dir=fashion_dir, device="cpu", size=DemoSize.tiny(), seed=1)
    assert len(stages) == 3
    assert _snapshot(first_run) == before  # byte for byte: models, gallery, results, plots
    assert _leftovers(first_run.parent) == []
    # The gallery still belongs to the old model that is there.
    old = BT2Model.from_pretrained(first_run / "models" / "old")
    assert FaissGallery.open(first_run / "gallery_old").encoder["fingerprint"] == old.config.fingerprint


@pytest.mark.slow
def test_rerun_with_an_out_of_range_label_is_refused_before_anything_is_written(first_run, tmp_path, capsys):
    bad = tmp_path / "bad-fashion"
    shutil.copytree(write_fashion_like_idx(tmp_path / "fashion"), bad)
    labels_path = bad / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels_path.read_bytes()))
    raw[8 + 17] = 10  # one label outside Fashion-MNIST's 10 classes
    labels_path.write_bytes(gzip.compress(bytes(raw)))
    before = _snapshot(first_run)
    status = demo_main(["--tiny", "--data-dir", str(bad), "--output", str(first_run), "--device", "cpu"])
    message = capsys.readouterr().out
    assert status == 2
    assert "train-labels-idx1-ubyte.gz" in message and "10" in message
    assert _snapshot(first_run) == before
    assert _leftovers(first_run.parent) == []
