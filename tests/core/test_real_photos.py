"""Real photographs (skimage.data: colour, grayscale, RGBA, every size) through every surface of a model built on a
saved-then-reloaded "pretrained" backbone folder: one photo gives one embedding everywhere, and search finds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, ViTConfig, ViTImageProcessor, ViTModel, pipeline

from bt2_hf import BT2Model

skimage_data = pytest.importorskip("skimage.data")

# name → (array, mode): RGB photos of four sizes, two grayscale ones, an RGBA logo
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "logo")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(getattr(skimage_data, name)()) for name in PHOTO_NAMES}


@pytest.fixture(scope="module")
def bt2_dir(tmp_path_factory):
    """A BT² model on a tiny 'pretrained' ViT (its folder saved, then reloaded), saved and reloaded itself."""
    root = tmp_path_factory.mktemp("photos")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             image_size=32, patch_size=8), add_pooling_layer=False)  # fmt: skip
    vit.save_pretrained(root / "pretrained-vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "pretrained-vit")  # fmt: skip
    model = BT2Model.from_pretrained_backbone(root / "pretrained-vit", "hf_vision", head_type="basis_transformation",
                                              feature_dim=16, old_embedding_dim=8, extra_dim=4)  # fmt: skip
    model.save_pretrained(root / "bt2")
    return root / "bt2"


def test_the_photos_are_real_and_varied(photos):
    sizes = {image.size for image in photos.values()}
    modes = {image.mode for image in photos.values()}
    assert len(sizes) >= 5 and {"RGB", "L", "RGBA"} <= modes


def test_one_photo_gives_one_embedding_through_every_surface(bt2_dir, photos):
    from sentence_transformers import SentenceTransformer

    images = list(photos.values())
    model = BT2Model.from_pretrained(bt2_dir)
    expected = model.encode(images=images)
    assert expected.shape == (len(images), 20)
    torch.testing.assert_close(expected.norm(dim=-1), torch.ones(len(images)))

    surfaces = {}
    extractor = pipeline("image-feature-extraction", model=str(bt2_dir))
    surfaces["pipeline"] = torch.tensor([row[0] for row in extractor(images)])
    surfaces["sentence-transformers"] = SentenceTransformer(str(bt2_dir)).encode(images, convert_to_tensor=True)
    auto_model, auto_processor = AutoModel.from_pretrained(bt2_dir), AutoImageProcessor.from_pretrained(bt2_dir)
    with torch.no_grad():
        surfaces["AutoModel + AutoImageProcessor"] = auto_model(**auto_processor(images)).embeddings
    arrays = [np.asarray(image) for image in images]
    surfaces["encode(numpy, one at a time)"] = torch.cat(
        [model.encode(images=[a], input_data_format="channels_last" if a.ndim == 3 else None) for a in arrays]
    )
    for name, embeddings in surfaces.items():
        torch.testing.assert_close(embeddings.float(), expected, atol=1e-5, rtol=0, msg=name)


def test_search_finds_each_photo_from_a_smaller_copy(bt2_dir, photos, tmp_path):
    pytest.importorskip("faiss")
    from bt2_hf.galleries import FaissGallery

    model = BT2Model.from_pretrained(bt2_dir)
    gallery = FaissGallery.from_model(tmp_path / "gallery", model, list(photos.values()), ids=list(photos))
    queries = [image.resize((image.width // 2, image.height // 2)) for image in photos.values()]
    result = gallery.search_with_model(model, images=queries, k=1)
    assert [row[0] for row in result.ids] == list(photos)
    # the compatible prefix searches a gallery of old-width embeddings the same way
    compatible = model.encode(images=queries, prefix_dim=model.config.compatible_dim)
    old_gallery = model.encode(images=list(photos.values()), prefix_dim=model.config.compatible_dim)
    assert (compatible @ old_gallery.T).argmax(dim=1).tolist() == list(range(len(photos)))
