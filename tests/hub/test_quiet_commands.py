"""Every ``bt2`` command is as quiet as ``bt2 push``: the HTTP clients' per-request lines only when verbose
(``bt2 --verbose <command>`` or ``BT2_LOG_LEVEL=DEBUG``), set once in ``bt2_hf/cli/main.py``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from bt2_hf.cli import _output
from bt2_hf.cli.main import COMMANDS
from bt2_hf.cli.main import main as bt2
from bt2_hf.hub import push_to_hub


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    # Recorded first, so that the teardown removes the variable a verbose run sets with os.environ.setdefault.
    monkeypatch.setenv("HF_HUB_VERBOSITY", "warning")
    monkeypatch.delenv("HF_HUB_VERBOSITY")
    monkeypatch.delenv(_output.LOG_LEVEL_VARIABLE, raising=False)
    levels = {name: logging.getLogger(name).level for name in _output.HTTP_LOGGERS}
    yield
    _output._verbose_for_every_command = False
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _http_levels() -> set[int]:
    return {logging.getLogger(name).level for name in _output.HTTP_LOGGERS}


def _run_help(argv: list[str]) -> None:
    try:
        bt2(argv)
    except SystemExit as stop:  # argparse's --help
        assert stop.code in (0, None)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_hides_http_requests_unless_verbose(command, monkeypatch, capsys):
    for name in _output.HTTP_LOGGERS:  # as a library user or an earlier test may have left them
        logging.getLogger(name).setLevel(logging.INFO)
    _run_help([command, "--help"])
    assert _http_levels() == {logging.WARNING}
    _run_help(["--verbose", command, "--help"])
    assert _http_levels() == {logging.DEBUG}
    _run_help([command, "--help"])  # the next command of the same process is quiet again
    assert _http_levels() == {logging.WARNING}
    monkeypatch.setenv(_output.LOG_LEVEL_VARIABLE, "debug")
    _run_help([command, "--help"])
    assert _http_levels() == {logging.DEBUG}
    capsys.readouterr()


def test_embedding_with_a_hub_model_logs_no_http_request_unless_verbose(hub, old_model, tmp_path, caplog):
    # The attack: a command that downloads its model (not `bt2 push`) printed one INFO line per HTTP request.
    push_to_hub(old_model, "bt2-tester/quiet-embed")
    folder = tmp_path / "photos" / "shirts"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{index}.png")
    arguments = ["embed", "--model", "bt2-tester/quiet-embed", "--data", str(folder.parent), "--no_progress"]
    with caplog.at_level(logging.INFO):
        assert bt2([*arguments, "--output", str(tmp_path / "quiet")]) == 0
    assert not [record for record in caplog.records if record.name.startswith(("httpx", "httpcore"))]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert bt2(["--verbose", *arguments, "--output", str(tmp_path / "verbose")]) == 0
    assert [record for record in caplog.records if record.name.startswith("httpx")]
