"""Hub conventions: the standard push methods go through bt2_hf's push; card YAML the Hub accepts."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from bt2_hf import BT2Model

from .conftest import embed, make_bt2_model


def _card(hub, repo_id: str) -> ModelCard:
    return ModelCard.load(hf_hub_download(repo_id, "README.md", cache_dir=hub.cache_dir))


def _files(hub, repo_id: str) -> set[str]:
    return {s.rfilename for s in HfApi(endpoint=hub.url).model_info(repo_id).siblings}


@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained"])
def test_standard_push_methods_upload_the_bt2_card_and_processor(hub, tmp_path, how):
    model = make_bt2_model()
    repo_id = f"bt2-tester/standard-{how.replace('_', '-')}"
    if how == "push_to_hub":
        model.push_to_hub(repo_id, token=hub.token, commit_message="via the transformers method name")
    else:
        model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=repo_id, token=hub.token)
        assert (tmp_path / "local" / "config.json").is_file()  # saved locally too
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= _files(hub, repo_id)
    card = _card(hub, repo_id)
    assert card.data.library_name == "bt2_hf" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.bt2["fingerprint"] == model.config.fingerprint
    assert card.data.license == "other"  # stated, until the user gives one
    assert card.data.datasets == ["synthetic"]  # config.training["dataset"], a (canonical) Hub repo id
    pulled = BT2Model.from_pretrained(repo_id, cache_dir=hub.cache_dir)
    torch.testing.assert_close(embed(pulled), embed(model), rtol=0, atol=0)


def test_card_metadata_only_holds_hub_repo_ids(hub, tmp_path):
    local_start = tmp_path / "my-local-backbone"
    local_start.mkdir()
    model = make_bt2_model()
    model.config.base_model = str(local_start)  # as older bt2_hf versions recorded a local start
    model.config.training = {**model.config.training, "init_from": str(local_start), "dataset": str(tmp_path)}
    model.push_to_hub("bt2-tester/local-start", token=hub.token, card_kwargs={"license": "apache-2.0"})
    card = _card(hub, "bt2-tester/local-start")
    assert card.data.base_model is None and card.data.get("base_model_relation") is None
    assert card.data.datasets is None
    assert card.data.bt2["init_from"] == str(local_start) and card.data.bt2["dataset"] == str(tmp_path)
    assert card.data.license == "apache-2.0"

    hub_start = make_bt2_model(seed=2)
    hub_start.config.base_model = "pretrained-org/tiny-vit"
    hub_start.config.training = {**hub_start.config.training, "init_from": "pretrained-org/tiny-vit",
                                 "dataset": "zalando-datasets/fashion_mnist"}  # fmt: skip
    hub_start.push_to_hub("bt2-tester/hub-start", token=hub.token)
    card = _card(hub, "bt2-tester/hub-start")
    assert card.data.base_model == "pretrained-org/tiny-vit" and card.data.base_model_relation == "finetune"
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert "init_from" not in card.data.bt2


def test_the_loopback_hub_refuses_card_yaml_the_hub_refuses(hub):
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("bt2-tester/bad-card", exist_ok=True)
    for bad in ("base_model: /home/me/checkpoints/vit", "datasets:\n- ./data/train", "base_model_relation: finetune"):
        with pytest.raises(ValueError, match="Invalid metadata in README.md"):
            api.upload_file(path_or_fileobj=f"---\n{bad}\n---\n# card\n".encode(), path_in_repo="README.md",
                            repo_id="bt2-tester/bad-card")  # fmt: skip
    good = "---\nbase_model: google/vit-base-patch16-224\nbase_model_relation: finetune\ndatasets:\n- cifar100\n---\n"
    api.upload_file(path_or_fileobj=good.encode(), path_in_repo="README.md", repo_id="bt2-tester/bad-card")


def test_bt2_train_writes_the_card_and_pushes(hub, tmp_path):
    import json

    from bt2_hf.cli.train import main
    from tests.conftest import write_fashion_like_idx

    data_dir = write_fashion_like_idx(tmp_path / "idx", train_per_class=4, test_per_class=1)
    out = tmp_path / "trained"
    status = main(["--method", "independent", "--backbone_config", '{"widths": [8]}', "--embedding_dim", "8",
                   "--dataset", "fashion_mnist", "--data_dir", str(data_dir), "--output_dir", str(out),
                   "--max_steps", "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "true",
                   "--push_to_hub", "true", "--hub_model_id", "bt2-tester/trained-by-cli"])  # fmt: skip
    assert status == 0
    local_card = ModelCard.load(out / "README.md")
    fingerprint = json.loads((out / "config.json").read_text())["fingerprint"]
    assert local_card.data.bt2["fingerprint"] == fingerprint
    card = _card(hub, "bt2-tester/trained-by-cli")
    assert card.data.bt2["fingerprint"] == fingerprint
    # the data came from local IDX files: no Hub data set to name, so the card records it under bt2 only
    assert card.data.datasets is None and card.data.bt2["dataset"].startswith("fashion_mnist:")
    assert "preprocessor_config.json" in _files(hub, "bt2-tester/trained-by-cli")
