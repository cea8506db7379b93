"""Attack: `--hub_namespace 'bad name/../x'` used to land in cards and configs; it is now refused before anything runs."""

from __future__ import annotations

import pytest

from bt2_hf.cli.demo import main as demo_main
from bt2_hf.utils.repo_id import validate_hub_namespace


@pytest.mark.parametrize("namespace", ["bad name/../x", "a/b", "../etc", "-org", "org.", "a--b", "a..b", "", "x" * 97])
def test_a_namespace_that_is_no_hub_name_is_refused(namespace):
    with pytest.raises(ValueError, match="is not a Hub namespace"):
        validate_hub_namespace(namespace)


@pytest.mark.parametrize("namespace", ["my-org", "bt2-hf-demo", "User_1", "a.b", "x"])
def test_hub_names_pass(namespace):
    assert validate_hub_namespace(namespace) == namespace


def test_bt2_demo_refuses_it_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo_main(["--tiny", "--output_dir", str(tmp_path / "out"), "--hub_namespace", "bad name/../x"])
    assert exit_.value.code == 2
    assert "is not a Hub namespace" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
