"""Pushing is quiet and clear: an unreachable or offline Hub is one line naming what to set; no per-request logs."""

from __future__ import annotations

import logging
import socket

import pytest
from huggingface_hub import constants

from bt2_hf.cli.push import main as push_main
from bt2_hf.hub import HubUnreachableError, push_to_hub


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_is_one_line_naming_hf_endpoint(old_model, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubUnreachableError) as caught:
        push_to_hub(old_model, "bt2-tester/nowhere", endpoint=endpoint, token="hf_x")
    message = str(caught.value)
    assert endpoint in message and "HF_ENDPOINT" in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_offline_mode_names_hf_hub_offline(old_model, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE"):
        push_to_hub(old_model, "bt2-tester/nowhere", token="hf_x")


def test_cli_push_to_an_unreachable_hub_exits_with_one_line(old_model, tmp_path, monkeypatch, capsys):
    old_model.save_pretrained(tmp_path / "old")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert push_main([str(tmp_path / "old"), "bt2-tester/nowhere", "--token", "hf_x"]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and "HF_ENDPOINT" in error
    assert [line for line in error.splitlines() if line.startswith("bt2 push:")] == [error.strip().splitlines()[-1]]


def test_cli_push_logs_no_http_request_unless_verbose(hub, old_model, tmp_path, caplog):
    old_model.save_pretrained(tmp_path / "old")
    with caplog.at_level(logging.INFO):
        assert push_main([str(tmp_path / "old"), "bt2-tester/quiet"]) == 0
    assert not [r for r in caplog.records if "HTTP Request" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert push_main([str(tmp_path / "old"), "bt2-tester/quiet", "--verbose"]) == 0
    assert [r for r in caplog.records if r.name.startswith("httpx")]
    for name in ("httpx", "httpx2", "huggingface_hub"):  # leave the process as a plain push leaves it
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_the_local_hub_takes_a_push(old_model, monkeypatch):
    from bt2_hf.hub.local_server import DEFAULT_TOKEN, HubServer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        info = push_to_hub(old_model, "bt2-tester/local", endpoint=server.url, token=DEFAULT_TOKEN)
        assert info.oid and "bt2-tester/local" in server.hub.repos


def test_bt2_hub_serve_prints_the_hf_endpoint_recipe_and_stops_on_ctrl_c():
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "bt2_hf.cli.main", "hub-serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the recipe line comes within the first few lines (a busy machine may print a warning first)
        lines = [server.stdout.readline() for _ in range(2)]
        while not any("HF_ENDPOINT=" in line for line in lines) and len(lines) < 10 and lines[-1]:
            lines.append(server.stdout.readline())
        recipe = next((line for line in lines if "HF_ENDPOINT=" in line), None)
        assert recipe is not None, (lines, server.stderr.read() if server.poll() is not None else "")
        endpoint = recipe.split("HF_ENDPOINT=")[1].split()[0]
        assert endpoint.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            endpoint + "/api/whoami-v2", headers={"Authorization": "Bearer hf_bt2_test_token"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["name"] == "bt2-tester"
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
