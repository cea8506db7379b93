"""A `bt2 demo --tiny` smoke run into a folder holding a finished run of another size is refused (nothing trained or
replaced); --overwrite replaces it; a re-run of the same size is an ordinary re-run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bt2_hf.experiments.demo import DemoSize, run_demo
from tests.conftest import write_fashion_like_idx

pytestmark = pytest.mark.slow  # every test runs the demo end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fashion_like_idx(tmp_path_factory.mktemp("fashion"))


def test_a_smoke_run_never_silently_replaces_a_bigger_run(tmp_path, data_dir):
    output = tmp_path / "out"
    bigger = replace(DemoSize.tiny(), new_steps=8)  # stands for the full run
    run_demo(output, data_dir=data_dir, device="cpu", size=bigger)
    before = (output / "results.json").read_bytes()

    with pytest.raises(
        ValueError, match=r"holds a finished demo run of another size.*new_steps: 8 there, 6 asked.*--overwrite"
    ):
        run_demo(output, data_dir=data_dir, device="cpu", size=DemoSize.tiny())
    assert (output / "results.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".bt2-" in p.name]  # no staging folder was started

    run_demo(output, data_dir=data_dir, device="cpu", size=DemoSize.tiny(), overwrite=True)
    assert json.loads((output / "results.json").read_text())["size"]["new_steps"] == 6
    run_demo(output, data_dir=data_dir, device="cpu", size=DemoSize.tiny(), seed=1)  # same size: allowed
    assert json.loads((output / "results.json").read_text())["seed"] == 1


def test_the_cli_names_the_flag(tmp_path, data_dir, capsys):
    from bt2_hf.cli.demo import main

    output = tmp_path / "out"
    assert main(["--tiny", "--data_dir", str(data_dir), "--output_dir", str(output), "--new_steps", "7"]) == 0
    capsys.readouterr()
    assert main(["--tiny", "--data_dir", str(data_dir), "--output_dir", str(output)]) == 2
    assert "Pass --overwrite to replace it" in capsys.readouterr().out


@pytest.mark.parametrize("edited", ["[1, 2, 3]", "{not json", '{"dataset": "x", "size": "all of it"}'])
def test_an_edited_results_file_is_not_taken_for_a_run_of_this_size(tmp_path, data_dir, edited):
    output = tmp_path / "out"
    output.mkdir()
    (output / "results.json").write_text(edited)
    with pytest.raises(ValueError, match="is not a results file this demo wrote.*--overwrite"):
        run_demo(output, data_dir=data_dir, device="cpu", size=DemoSize.tiny())
    assert (output / "results.json").read_text() == edited  # nothing replaced
