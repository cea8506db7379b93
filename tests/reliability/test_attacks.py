"""Issue 24: each probe of the hostile-user review, written as the attack, and what it gets now (refused, named)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import CNN, quick_args, synthetic_data  # noqa: E402

from bt2_hf import BT2Model  # noqa: E402
from bt2_hf.compatibility import IncompatibleModelsError, entry_content_hash, seal_entry  # noqa: E402
from bt2_hf.errors import BT2InputError  # noqa: E402
from bt2_hf.fingerprint import state_fingerprint as fingerprint_state_and_processor  # noqa: E402
from bt2_hf.training import DataArguments, ModelArguments, train  # noqa: E402
from bt2_hf.training.checkpointing import list_checkpoints  # noqa: E402


class _MakesADirectory:
    """A pickle that, when loaded, creates ``marker``: the stand-in for any code a crafted checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _train_independent(output_dir, data, **overrides):
    args = quick_args(output_dir, "independent", **{"max_steps": 4, "save_steps": 1, **overrides})
    return train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(), args, train_data=data)


# ---- 1. No code runs from a checkpoint


def test_checkpoints_hold_only_json_and_safetensors(tmp_path):
    out = tmp_path / "run"
    _train_independent(out, synthetic_data(n=48), stop_after_steps=2)
    checkpoint = list_checkpoints(out)[-1]
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names and all(name.endswith((".json", ".safetensors")) for name in names), names


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.pt", "state"])
def test_a_pickle_planted_in_a_checkpoint_is_refused_and_runs_nothing(tmp_path, name):
    data = synthetic_data(n=48)
    out = tmp_path / "run"
    _train_independent(out, data, stop_after_steps=2)
    checkpoint = list_checkpoints(out)[-1]
    marker = tmp_path / "pwned"
    (checkpoint / name).write_bytes(pickle.dumps(_MakesADirectory(marker)))

    with pytest.raises(BT2InputError, match=name.replace(".", r"\.") + ".*pickle"):
        _train_independent(out, data, resume_from_checkpoint="latest")
    assert not marker.exists()
    assert not (out / "model.safetensors").exists()


# ---- 2. The fingerprint covers what is loaded


def _tampered_copy(saved_model):
    """The model's weights with its biggest tensor zeroed: what an attacker wants loaded."""
    weights = load_file(saved_model / "model.safetensors")
    name = max(weights, key=lambda k: weights[k].numel())
    weights[name] = torch.zeros_like(weights[name])
    return weights


def test_a_tampered_pytorch_model_bin_beside_good_safetensors_is_not_loaded(saved_model):
    torch.save(_tampered_copy(saved_model), saved_model / "pytorch_model.bin")
    with pytest.raises(ValueError, match="use_safetensors=False.*pytorch_model.bin"):
        BT2Model.from_pretrained(saved_model, use_safetensors=False)
    # without the switch the untouched safetensors load, and that is what is verified
    model = BT2Model.from_pretrained(saved_model)
    assert model.verified_fingerprint() == fingerprint_state_and_processor(model)


def test_a_variant_file_beside_good_safetensors_is_not_loaded(saved_model):
    save_file(_tampered_copy(saved_model), saved_model / "model.evil.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="variant='evil'.*model.<variant>.safetensors"):
        BT2Model.from_pretrained(saved_model, variant="evil")


def test_a_state_dict_passed_to_from_pretrained_is_refused(saved_model):
    with pytest.raises(ValueError, match="state_dict="):
        BT2Model.from_pretrained(saved_model, state_dict=_tampered_copy(saved_model))


def test_only_a_pickled_bin_is_never_loaded(saved_model, tmp_path):
    """A checkpoint whose safetensors were replaced by a .bin: nothing is unpickled, the load is refused."""
    torch.save(_tampered_copy(saved_model), saved_model / "pytorch_model.bin")
    (saved_model / "model.safetensors").unlink()
    with pytest.raises(BT2InputError, match="model.safetensors"):
        BT2Model.from_pretrained(saved_model)


# ---- 3. Claims are bound to the model, and 4. measurements never overstate


@pytest.fixture(scope="module")
def measured_pair(tmp_path_factory):
    """A 16-d old model, a BCT model verified against it (a measured entry on the whole 120-item test split), and an
    independent 16-d model never measured against it."""
    from bt2_hf.data import load_fashion_mnist
    from bt2_hf.verify import verify_compatibility
    from tests.conftest import write_fashion_like_idx

    root = tmp_path_factory.mktemp("measured")
    bands = write_fashion_like_idx(root / "bands")
    data = load_fashion_mnist(bands, "train")

    def fit(name, method, seed=42, **model):
        args = quick_args(root / name, method, per_device_train_batch_size=32, max_steps=12, seed=seed)
        return train(ModelArguments(backbone_config=CNN, embedding_dim=16, logit_scale=16.0, **model),
                     DataArguments(), args, train_data=data)  # fmt: skip

    old = fit("old", "independent")
    bct = fit("bct", "bct", old_model=str(old))
    independent = fit("independent", "independent", seed=7)
    verify_compatibility(bct, old, str(bands), split="test", dataset_name="bands", update_card=False)
    return {"old": Path(old), "bct": Path(bct), "independent": Path(independent), "bands": bands}


def _config(path):
    return json.loads((Path(path) / "config.json").read_text())


def _write_config(path, config):
    (Path(path) / "config.json").write_text(json.dumps(config, indent=2))


def _admit(path, old):
    from bt2_hf.compatibility import admit_query_model

    model = BT2Model.from_pretrained(path)
    return admit_query_model(model.config, _config(old)["fingerprint"], 16, str(old))


def _passing(entry):
    """The attacker's edit: numbers that pass on every metric."""
    for metric in ("top1", "top5", "mAP"):
        entry["metrics"]["new/old"][metric] = entry["metrics"]["old/old"][metric] + 5.0
    entry["criterion"].update(passed=True, margin={m: 5.0 for m in entry["criterion"]["metrics"]})
    return entry


@pytest.fixture
def copies(measured_pair, tmp_path):
    """Copies of the three models that each attack may edit."""
    return {
        name: Path(shutil.copytree(measured_pair[name], tmp_path / name)) for name in ("old", "bct", "independent")
    }


def test_the_measured_entry_records_what_it_measured(measured_pair):
    entry = _config(measured_pair["bct"])["compatible_with"][0]
    assert entry["query_fingerprint"] == _config(measured_pair["bct"])["fingerprint"]
    assert entry["fingerprint"] == _config(measured_pair["old"])["fingerprint"]
    assert entry["dataset"]["size"] == 120 and len(entry["dataset"]["sha256"]) == 64
    assert entry["entry_sha256"] == entry_content_hash(entry)


@pytest.mark.parametrize("reseal", [False, True], ids=["as-pasted", "hash-recomputed"])
def test_an_entry_copied_into_the_independent_models_config_is_refused(copies, reseal):
    entry = _passing(_config(copies["bct"])["compatible_with"][0])
    if reseal:
        seal_entry(entry)
    config = _config(copies["independent"])
    config["compatible_with"] = [entry]
    _write_config(copies["independent"], config)
    with pytest.raises(IncompatibleModelsError, match="measured on another query model.*copied"):
        _admit(copies["independent"], copies["old"])


def test_an_entry_edited_to_pass_is_refused(copies):
    config = _config(copies["bct"])
    _passing(config["compatible_with"][0])
    _write_config(copies["bct"], config)
    with pytest.raises(IncompatibleModelsError, match="content hash does not match.*edited"):
        _admit(copies["bct"], copies["old"])


@pytest.mark.parametrize("drop_top1", [False, True], ids=["judged-on-mAP-only", "top1-removed"])
def test_an_entry_rejudged_on_fewer_metrics_is_refused_even_with_its_hash_recomputed(copies, drop_top1):
    config = _config(copies["bct"])
    entry = config["compatible_with"][0]
    old_old = entry["metrics"]["old/old"]
    entry["metrics"]["new/old"].update(top1=old_old["top1"] - 5.0, mAP=old_old["mAP"] + 5.0)  # top-1 fails
    if drop_top1:
        for values in entry["metrics"].values():
            values.pop("top1")
    entry["criterion"].update(metric="mAP", metrics=["mAP"], passed=True, margin={"mAP": 5.0})
    _write_config(copies["bct"], {**config, "compatible_with": [seal_entry(entry)]})
    match = "no new/old and old/old \\['top1'\\]" if drop_top1 else "FAILED.*top1 new→old"
    with pytest.raises(IncompatibleModelsError, match=match):
        _admit(copies["bct"], copies["old"])


def test_a_smaller_measurement_does_not_replace_a_larger_one(copies, measured_pair, capsys):
    from bt2_hf.cli.main import main as bt2_main

    before = _config(copies["bct"])["compatible_with"][0]
    command = ["verify", str(copies["bct"]), "--old", str(copies["old"]), "--data", str(measured_pair["bands"]),
               "--dataset_name", "bands", "--max_per_class", "3"]  # fmt: skip
    assert bt2_main(command) == 2
    assert "120 items" in capsys.readouterr().err
    assert _config(copies["bct"])["compatible_with"][0] == before  # the 120-item entry stays

    bt2_main([*command, "--no_write"])
    assert "not recorded (--no_write)" in capsys.readouterr().out
    assert _config(copies["bct"])["compatible_with"][0] == before

    bt2_main([*command, "--replace"])
    entry = _config(copies["bct"])["compatible_with"][0]
    assert entry["dataset"]["size"] == 30  # 3 of each of the 10 classes: per class, not in all
    assert entry["replaced"]["dataset"]["size"] == 120 and "--replace" in capsys.readouterr().out


def test_admission_says_which_measurement_it_used(measured_pair):
    from bt2_hf.compatibility import AdmissionPolicy, admit_query_model

    model = BT2Model.from_pretrained(measured_pair["bct"])
    old = _config(measured_pair["old"])["fingerprint"]
    entry = model.config.compatible_with[0]
    lenient = AdmissionPolicy(required_metrics=("top1", "mAP"), min_margin=-100.0)
    admission = admit_query_model(model.config, old, 16, "old", policy=lenient)
    assert "bands:test (120 items" in admission.evidence and entry["entry_sha256"][:12] in admission.evidence
    with pytest.raises(IncompatibleModelsError, match="120 held-out items.*at least 1000"):
        admit_query_model(model.config, old, 16, "old", policy=AdmissionPolicy(min_margin=-100.0, min_size=1000))


# ---- 5. Resume is this run's


def test_resuming_with_other_settings_is_refused_naming_each_difference(tmp_path):
    data = synthetic_data(n=48)
    out = tmp_path / "run"
    _train_independent(out, data, stop_after_steps=2, seed=1, learning_rate=1e-3)
    with pytest.raises(ValueError) as error:
        _train_independent(out, data, seed=2, learning_rate=5e-3, resume_from_checkpoint="latest")
    message = str(error.value)
    assert "seed: recorded 1, asked 2" in message and "learning_rate: recorded 0.001, asked 0.005" in message
    assert "--resume_with_changes" in message and not (out / "model.safetensors").exists()

    _train_independent(out, data, seed=2, learning_rate=5e-3, resume_from_checkpoint="latest",
                       resume_with_changes=True)  # fmt: skip
    recorded = json.loads((out / "run.json").read_text())["resumed_with_changes"]
    assert any("seed: recorded 1, asked 2" in change for change in recorded[0]["changes"])


# ---- 6. Galleries check their files

ENCODER = {"fingerprint": "sha256:" + "a" * 64, "name_or_path": "org/old", "embedding_dim": 8}


def _gallery(path, **kwargs):
    from bt2_hf.galleries import FaissGallery

    vectors = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    return FaissGallery.build(path, vectors, encoder=ENCODER, **kwargs)


def test_reversed_vectors_rows_are_detected(tmp_path):
    from bt2_hf.galleries import FaissGallery

    _gallery(tmp_path / "g", index_type="ivf", nlist=2)
    vectors = np.load(tmp_path / "g" / "vectors.npy")
    np.save(tmp_path / "g" / "vectors.npy", vectors[::-1].copy())  # same size, every re-ranking answer changes
    with pytest.raises(BT2InputError, match="vectors.npy.*sha256"):
        FaissGallery.open(tmp_path / "g")
    with open(tmp_path / "g" / "vectors.npy", "ab") as handle:  # and a size change is caught without hashing
        handle.write(b"\0" * 32)
    with pytest.raises(BT2InputError, match="vectors.npy holds .* bytes"):
        FaissGallery.open(tmp_path / "g", verify=False)


@pytest.mark.parametrize("key", ["encoder", "dimension", "files"])
def test_a_manifest_missing_a_key_is_named_not_a_key_error(tmp_path, key):
    from bt2_hf.galleries import FaissGallery

    _gallery(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    del manifest[key]
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BT2InputError, match=f"manifest has no '{key}'"):
        FaissGallery.open(tmp_path / "g")


def test_of_two_concurrent_builds_into_a_new_directory_exactly_one_succeeds(tmp_path, monkeypatch):
    """Build B starts after build A's existence check and finishes first: A must fail, B's gallery stays."""
    from bt2_hf.galleries import FaissGallery, faiss_store

    target = tmp_path / "g"
    real_build_index = faiss_store.build_faiss_index
    other = {}

    def build_index_while_another_build_finishes(vectors, index_type, params):
        if not other:  # build B: another process, run to completion inside build A
            other["started"] = True
            script = (
                "import json, sys, numpy as np\nfrom bt2_hf.galleries import FaissGallery\n"
                "FaissGallery.build(sys.argv[1], np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32),"
                " encoder=json.loads(sys.argv[2]))\n"
            )
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
            subprocess.run([sys.executable, "-c", script, str(target), json.dumps(ENCODER)], check=True, env=env)
        return real_build_index(vectors, index_type, params)

    monkeypatch.setattr(faiss_store, "build_faiss_index", build_index_while_another_build_finishes)
    with pytest.raises(FileExistsError, match="appeared while this one was being built"):
        _gallery(target, index_type="hnsw")
    assert FaissGallery.open(target).manifest["index"]["type"] == "flat"  # B's gallery, not replaced
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # A's staging folder is gone


# ---- 7. Smaller holes


def test_training_at_lr_1e6_stops_with_the_step_and_saves_nothing(tmp_path):
    from bt2_hf.cli.main import main as bt2_main  # noqa: F401  (the CLI maps the error to a non-zero exit)

    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"diverged (at|after) step \d+"):
        _train_independent(out, synthetic_data(n=48), learning_rate=1e6, max_steps=6, save_steps=0)
    assert not (out / "model.safetensors").exists() and not list_checkpoints(out)
