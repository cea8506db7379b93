"""Push and pull for real over HTTP: the real huggingface_hub / transformers clients against the loopback Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from transformers import AutoModel

from bt2_hf import BT2Model, FingerprintMismatchError, IncompatibleModelsError, fingerprint_model
from bt2_hf.cli.push import main as push_main
from bt2_hf.hub import declare_compatibility, push_to_hub, resolve_query_model
from bt2_hf.hub.local_server import DEFAULT_TOKEN

from .conftest import FAKE_DATASET, FAKE_RESULTS, embed, make_bt2_model, make_old_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pull(repo_id: str, hub, **kwargs) -> BT2Model:
    return BT2Model.from_pretrained(repo_id, cache_dir=hub.cache_dir, **kwargs)


def test_push_then_pull_gives_identical_embeddings(hub, bt2_model):
    info = push_to_hub(bt2_model, "bt2-tester/tiny-bt2", token=hub.token, card_metrics=None)
    assert len(info.oid) == 40
    pulled = _pull("bt2-tester/tiny-bt2", hub)
    assert pulled.config.fingerprint == bt2_model.config.fingerprint
    torch.testing.assert_close(embed(pulled), embed(bt2_model), rtol=0, atol=0)
    assert type(pulled.processor).__name__ == "BT2ImageProcessor"
    auto = AutoModel.from_pretrained("bt2-tester/tiny-bt2", cache_dir=hub.cache_dir)
    assert isinstance(auto, BT2Model)
    torch.testing.assert_close(embed(auto), embed(bt2_model), rtol=0, atol=0)

    files = {s.rfilename for s in HfApi(endpoint=hub.url).model_info("bt2-tester/tiny-bt2").siblings}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    # The requests really went over HTTP to the loopback server.
    assert ("POST", "/api/models/bt2-tester/tiny-bt2/commit/main") in hub.hub.requests
    assert ("GET", "/bt2-tester/tiny-bt2/resolve/" + info.oid + "/model.safetensors") in hub.hub.requests


def test_revisions_branch_and_commit(hub):
    repo = "bt2-tester/versions"
    v1, v2, v1b = make_bt2_model(seed=11), make_bt2_model(seed=12), make_bt2_model(seed=13)
    first = push_to_hub(v1, repo, token=hub.token, commit_message="v1")
    on_branch = push_to_hub(v2, repo, revision="v2", token=hub.token, commit_message="v2 on a branch")
    second = push_to_hub(v1b, repo, token=hub.token, commit_message="second commit on main", max_shard_size="2KB")
    assert len({first.oid, on_branch.oid, second.oid}) == 3

    fingerprints = {
        "main": _pull(repo, hub).config.fingerprint,
        "v2": _pull(repo, hub, revision="v2").config.fingerprint,
        "first": _pull(repo, hub, revision=first.oid).config.fingerprint,
    }
    assert fingerprints == {
        "main": v1b.config.fingerprint,
        "v2": v2.config.fingerprint,
        "first": v1.config.fingerprint,
    }
    torch.testing.assert_close(embed(_pull(repo, hub, revision="v2")), embed(v2), rtol=0, atol=0)
    # The sharded second push removed the single-file weights of the first one in the same commit.
    files = {s.rfilename for s in HfApi(endpoint=hub.url).model_info(repo).siblings}
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files
    with pytest.raises(ValueError, match="commit sha"):
        push_to_hub(v1, repo, revision=first.oid, token=hub.token)


def test_cache_only_reload_with_server_stopped(hub, bt2_model, monkeypatch):
    repo = "bt2-tester/cached"
    info = push_to_hub(bt2_model, repo, token=hub.token)
    online = _pull(repo, hub)
    by_sha = _pull(repo, hub, revision=info.oid)
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = _pull(repo, hub)
    torch.testing.assert_close(embed(offline), embed(online), rtol=0, atol=0)
    assert type(offline.processor).__name__ == "BT2ImageProcessor"
    assert _pull(repo, hub, revision=info.oid).config.fingerprint == by_sha.config.fingerprint
    with pytest.raises(OSError):
        _pull("bt2-tester/never-downloaded", hub)


def test_private_repo_needs_the_token(hub, bt2_model, monkeypatch):
    repo = "bt2-tester/private"
    push_to_hub(bt2_model, repo, token=hub.token, private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(OSError):
        _pull(repo, hub, token=False)
    pulled = _pull(repo, hub, token=DEFAULT_TOKEN)
    assert pulled.config.fingerprint == bt2_model.config.fingerprint


def test_push_refreshes_card_and_keeps_user_sections(hub, tmp_path, old_model, bt2_model):
    repo = "bt2-tester/carded"
    declare_compatibility(bt2_model.config, old_model, method="bt2", name_or_path="bt2-tester/old")
    push_to_hub(bt2_model, repo, token=hub.token, card_metrics=FAKE_RESULTS)
    api = HfApi(endpoint=hub.url, token=hub.token)
    readme = Path(api.hf_hub_download(repo, "README.md", cache_dir=hub.cache_dir)).read_text()
    api.upload_file(
        path_or_fileobj=(readme + "\n## Notes from the team\n\nKeep this.\n").encode(),
        path_in_repo="README.md",
        repo_id=repo,
    )
    push_to_hub(bt2_model, repo, token=hub.token, card_metrics=FAKE_RESULTS, commit_message="refresh")
    card = ModelCard.load(api.hf_hub_download(repo, "README.md", cache_dir=hub.cache_dir))
    assert "## Notes from the team\n\nKeep this." in card.text
    assert card.text.count("## Compatibility results") == 1
    assert {r.metric_name for r in card.data.eval_results} >= {"top-1 new→old", "top-1 old→old", "top-1 new→new"}
    assert card.data.bt2["compatible_with"][0]["name_or_path"] == "bt2-tester/old"


def test_resolve_query_model_and_refusal(hub, tmp_path):
    old, stranger, new = make_old_model(seed=0), make_old_model(seed=5), make_bt2_model(seed=1)
    push_to_hub(old, "bt2-tester/old", token=hub.token)
    push_to_hub(stranger, "bt2-tester/stranger", token=hub.token)
    declare_compatibility(
        new.config, old, method="bt2", name_or_path="bt2-tester/old", revision="main", metrics=FAKE_RESULTS,
        dataset=FAKE_DATASET, query_fingerprint=fingerprint_model(new),  # bound to the model push_to_hub saves
    )  # fmt: skip
    push_to_hub(new, "bt2-tester/new", token=hub.token)
    hub_kwargs = {"cache_dir": hub.cache_dir}

    manifest = {"fingerprint": old.config.fingerprint, "embedding_dim": 16, "name_or_path": "bt2-tester/old"}
    model, prefix = resolve_query_model(manifest, ["bt2-tester/stranger", "bt2-tester/new"], **hub_kwargs)
    assert prefix == 16 and model.config.fingerprint == new.config.fingerprint
    # new's prefix on old-gallery queries equals its compatible block.
    torch.testing.assert_close(
        torch.nn.functional.normalize(embed(model)[:, :prefix], dim=-1),
        embed(new).narrow(1, 0, 16) / embed(new).narrow(1, 0, 16).norm(dim=-1, keepdim=True),
    )
    # The gallery given by its old model's Hub id, or a gallery directory as bt2_hf.galleries writes it.
    assert resolve_query_model("bt2-tester/old", ["bt2-tester/new"], **hub_kwargs)[1] == 16
    from bt2_hf.galleries import FaissGallery

    encoder = {"fingerprint": old.config.fingerprint, "name_or_path": "bt2-tester/old", "embedding_dim": 16}
    FaissGallery.build(tmp_path / "gallery", embed(old).numpy(), encoder=encoder)
    assert resolve_query_model(tmp_path / "gallery", ["bt2-tester/new"], **hub_kwargs)[1] == 16

    stranger_gallery = {"fingerprint": stranger.config.fingerprint, "embedding_dim": 16, "name_or_path": "strangers"}
    with pytest.raises(IncompatibleModelsError) as error:
        resolve_query_model(stranger_gallery, ["bt2-tester/new", "bt2-tester/old"], **hub_kwargs)
    message = str(error.value)
    assert "strangers" in message and "bt2-tester/new" in message and "bt2-tester/old" in message
    assert "backfill" in message and "bt2 verify bt2-tester/new --old strangers" in message


def test_pulled_weights_that_differ_from_the_config_are_refused(hub, bt2_model, tmp_path):
    repo = "bt2-tester/tampered"
    push_to_hub(bt2_model, repo, token=hub.token)
    other = make_bt2_model(seed=99)
    other.save_pretrained(tmp_path / "other")
    HfApi(endpoint=hub.url, token=hub.token).upload_file(
        path_or_fileobj=str(tmp_path / "other" / "model.safetensors"), path_in_repo="model.safetensors", repo_id=repo
    )
    with pytest.raises(FingerprintMismatchError) as error:
        _pull(repo, hub)
    assert repo in str(error.value)


def test_push_cli(hub, tmp_path, bt2_model, old_model, capsys):
    declare_compatibility(bt2_model.config, old_model, method="bt2", name_or_path="bt2-tester/old")
    bt2_model.save_pretrained(tmp_path / "ckpt")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(FAKE_RESULTS))
    argv = [str(tmp_path / "ckpt"), "bt2-tester/cli", "--revision", "release", "--token", hub.token]
    assert push_main([*argv, "--results", str(results), "--private"]) == 0
    assert "at commit" in capsys.readouterr().out
    pulled = _pull("bt2-tester/cli", hub, revision="release", token=hub.token)
    assert pulled.config.fingerprint == bt2_model.config.fingerprint
    card_path = HfApi(endpoint=hub.url, token=hub.token).hf_hub_download(
        "bt2-tester/cli", "README.md", revision="release", cache_dir=hub.cache_dir
    )
    assert "✅ pass" in Path(card_path).read_text()
    assert push_main([str(tmp_path / "missing"), "bt2-tester/cli"]) == 1


def test_endpoint_from_environment_in_a_fresh_process(hub, tmp_path):
    """Users select an endpoint with HF_ENDPOINT before importing anything: check that path end to end."""
    script = textwrap.dedent(
        """
        import sys, torch
        from bt2_hf import BT2Config, BT2Model
        from bt2_hf.hub import push_to_hub
        torch.manual_seed(0)
        config = BT2Config(backbone_type="small_cnn", backbone_config={"widths": [8, 16]}, embedding_dim=8)
        model = BT2Model(config).eval()
        info = push_to_hub(model, "bt2-tester/from-env")
        pulled = BT2Model.from_pretrained("bt2-tester/from-env", revision=info.oid)
        x = torch.randn(2, 1, 28, 28)
        assert torch.equal(model(pixel_values=x).embeddings, pulled.eval()(pixel_values=x).embeddings)
        print("OK", info.oid)
        """
    )
    # Only what a user selecting an endpoint sets: no offline switch (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE,
    # HF_DATASETS_OFFLINE) or other Hugging Face setting may reach the child.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS_")) and k != "XDG_CACHE_HOME"
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN=DEFAULT_TOKEN,
        HF_HOME=str(tmp_path / "hf-home"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    # A generous limit: a fresh process imports torch and transformers, minutes on a loaded 2-core machine.
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
    assert ("POST", "/api/models/bt2-tester/from-env/commit/main") in hub.hub.requests
