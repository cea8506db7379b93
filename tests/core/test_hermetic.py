"""The suite's hermetic environment (tests/conftest.py), checked from a pytest run with user settings exported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

INNER = textwrap.dedent(
    """
    import os, subprocess, sys
    from pathlib import Path

    from huggingface_hub import constants

    def _check():
        for name in ("TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "ACCELERATE_MIXED_PRECISION",
                     "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
            assert name not in os.environ, name
        home = Path(os.environ["HF_HOME"])
        assert "user-home" not in str(home) and "user-cache" not in os.environ["XDG_CACHE_HOME"]
        assert Path(constants.HF_HUB_CACHE).parent == home and Path(constants.HF_TOKEN_PATH).parent == home
        child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['HF_HOME'])"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == str(home)
        return home

    def test_first():
        pytest_homes.append(_check())
        os.environ["TRANSFORMERS_OFFLINE"] = "1"  # leaked on purpose: the next test must not see it

    def test_second():
        pytest_homes.append(_check())
        assert pytest_homes[0] != pytest_homes[1]

    pytest_homes = []
    """
)


def test_suite_ignores_the_users_hugging_face_settings(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = dict(
        os.environ,
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_TOKEN="hf_user_token",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path / "user-home"),
        XDG_CACHE_HOME=str(tmp_path / "user-cache"),
        HUGGINGFACE_HUB_CACHE=str(tmp_path / "user-cache" / "hub"),
        TRANSFORMERS_CACHE=str(tmp_path / "user-cache" / "transformers"),
        ACCELERATE_MIXED_PRECISION="fp16",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_inner.py"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
    assert not (tmp_path / "user-home").exists() and not (tmp_path / "user-cache").exists()
