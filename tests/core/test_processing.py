"""BT2ImageProcessor: a registered transformers image processor, and the one image input contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

from bt2_hf import BT2Config, BT2ImageProcessor, BT2Model, ImageInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))


def tiny_model(num_channels: int = 1, image_size: int = 28, seed: int = 0) -> BT2Model:
    torch.manual_seed(seed)
    config = BT2Config(
        backbone_type="small_cnn",
        backbone_config={"num_channels": num_channels, "widths": [8, 16], "image_size": image_size},
        embedding_dim=8,
    )
    return BT2Model(config).eval()


def gradient(height: int, width: int, channels: int | None = None) -> np.ndarray:
    """A deterministic uint8 test pattern."""
    y, x = np.mgrid[0:height, 0:width]
    image = ((x * 7 + y * 3) % 256).astype(np.uint8)
    if channels:
        image = np.stack([np.roll(image, shift=11 * c, axis=1) for c in range(channels)], axis=-1)
    return image


def test_auto_image_processor_loads_the_saved_processor(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "BT2ImageProcessor"
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, BT2ImageProcessor)
    assert processor.to_dict() == model.processor.to_dict()
    assert processor.image_size == (28, 28)


def test_exact_values_for_constant_images():
    processor = BT2ImageProcessor(size={"height": 4, "width": 4}, num_channels=1)
    out = processor([np.full((9, 7), 255, np.uint8), np.zeros((3, 5), np.uint8)])["pixel_values"]
    assert out.shape == (2, 1, 4, 4)
    torch.testing.assert_close(out[0], torch.ones(1, 4, 4), atol=1e-6, rtol=0)  # (1 - 0.5) / 0.5
    torch.testing.assert_close(out[1], -torch.ones(1, 4, 4), atol=1e-6, rtol=0)


def test_mixed_sizes_batch_and_each_image_is_processed_alone():
    model = tiny_model()
    images = [gradient(28, 28), gradient(40, 33), gradient(17, 90)]
    together = model.encode(images=images)
    alone = torch.cat([model.encode(images=[image]) for image in images])
    assert together.shape == (3, 8)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    chunked = model.encode(images=images, batch_size=2)
    torch.testing.assert_close(chunked, together, atol=1e-6, rtol=0)


def test_pil_numpy_torch_and_dtypes_give_the_same_pixels():
    processor = BT2ImageProcessor(size={"height": 12, "width": 12}, num_channels=3)
    rgb = gradient(20, 16, channels=3)
    reference = processor(Image.fromarray(rgb))["pixel_values"]
    variants = {
        "numpy hwc": processor(rgb, input_data_format="channels_last"),
        "numpy hwc, layout inferred": processor(rgb),
        "torch chw": processor(torch.from_numpy(rgb).permute(2, 0, 1), input_data_format="channels_first"),
        "float [0,1]": processor(rgb.astype(np.float32) / 255, input_data_format="channels_last"),
        "uint16": processor(rgb.astype(np.uint16) * 257, input_data_format="channels_last"),
        "rgba": processor(Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]))),
        "4-d batch": processor(rgb[None]),  # (1, H, W, 3): the channel axis is unambiguous
    }
    for name, out in variants.items():
        torch.testing.assert_close(out["pixel_values"], reference, atol=1e-6, rtol=0, msg=name)


def test_channel_conversion_grayscale_to_rgb_and_rgb_to_gray():
    gray = gradient(10, 10)
    to_rgb = BT2ImageProcessor(size=10, num_channels=3)(gray)["pixel_values"]
    assert torch.equal(to_rgb[0, 0], to_rgb[0, 1]) and torch.equal(to_rgb[0, 1], to_rgb[0, 2])
    rgb = gradient(10, 10, channels=3)
    to_gray = BT2ImageProcessor(size=10, num_channels=1)(Image.fromarray(rgb))["pixel_values"]
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    torch.testing.assert_close(to_gray[0, 0].double(), torch.from_numpy((luma - 0.5) / 0.5), atol=1e-6, rtol=0)


def test_a_3d_array_is_read_as_transformers_reads_it_and_only_a_truly_ambiguous_one_is_refused():
    model = tiny_model()
    stack = np.stack([gradient(28, 28), gradient(28, 28)[::-1], gradient(28, 28)[:, ::-1]])  # (3, 28, 28)
    one_rgb = model.encode(images=stack, input_data_format="channels_first")
    torch.testing.assert_close(model.encode(images=stack), one_rgb)  # (C, H, W), as transformers infers it
    assert model.encode(images=list(stack)).shape == (3, 8)  # three grayscale images: a list of 2-D arrays
    ambiguous = np.zeros((3, 28, 3), np.uint8)
    with pytest.raises(ImageInputError, match=r"Image 0 has shape \(3, 28, 3\).*input_data_format='channels_last'"):
        model.encode(images=ambiguous)
    assert model.encode(images=ambiguous, input_data_format="channels_last").shape == (1, 8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_hwc_and_chw_arrays_with_1_3_or_4_channels_need_no_layout(channels):
    processor = BT2ImageProcessor(size={"height": 12, "width": 12}, num_channels=3)
    hwc = gradient(20, 16, channels=3)
    hwc = {1: hwc[..., :1], 3: hwc, 4: np.dstack([hwc, np.full(hwc.shape[:2], 9, np.uint8)])}[channels]
    expected = processor(hwc, input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(processor(hwc)["pixel_values"], expected)
    torch.testing.assert_close(processor(np.moveaxis(hwc, -1, 0))["pixel_values"], expected)
    inferred = infer_channel_dimension_format(hwc, num_channels=(1, 3, 4))
    assert inferred == ChannelDimension.LAST  # the layout transformers reads, too


def test_real_photos_as_numpy_arrays_embed_like_the_pil_images():
    skimage_data = pytest.importorskip("skimage.data")
    model = tiny_model(num_channels=3)
    processor = BT2ImageProcessor(size={"height": 32, "width": 32}, num_channels=3)
    for photo in (skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.camera()):
        pil = Image.fromarray(photo)
        expected = processor(pil)["pixel_values"]
        torch.testing.assert_close(processor(np.asarray(pil))["pixel_values"], expected)  # (H, W, C) or (H, W)
        if photo.ndim == 3:
            torch.testing.assert_close(processor(np.ascontiguousarray(photo.transpose(2, 0, 1)))["pixel_values"],
                                       expected)  # fmt: skip
            rgba = np.asarray(pil.convert("RGBA"))
            torch.testing.assert_close(processor(rgba)["pixel_values"], expected)
    photo = np.asarray(Image.fromarray(skimage_data.astronaut()))
    torch.testing.assert_close(model.encode(images=photo), model.encode(images=Image.fromarray(photo)))


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "No images to encode"),
        (
            [gradient(8, 8), np.full((8, 8), 3.0, np.float32)],
            r"Image 1 is float with values in \[3, 3\].*divide it by 255",
        ),
        ([gradient(8, 8), np.full((8, 8), np.nan, np.float32)], "Image 1 contains NaN"),
        ([gradient(8, 8), gradient(8, 8), np.zeros((0, 8), np.uint8)], "Image 2 is empty"),
        ([gradient(8, 8), np.zeros(8, np.uint8)], "Image 1 has 1 dimensions"),
        ([np.zeros((8, 8), np.int64)], "Image 0 has dtype torch.int64.*value range is unknown"),
        ([np.zeros((8, 8, 5), np.uint8)], "neither end is a channel count"),
        ([gradient(8, 8), "photo.jpg"], "Image 1 has unsupported type str"),
    ],
)
def test_bad_inputs_name_the_image_and_the_fix(images, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().encode(images=images)


def test_error_index_counts_across_encode_batches():
    images = [gradient(8, 8)] * 5 + [np.full((8, 8), 2.0)]
    with pytest.raises(ImageInputError, match="Image 5 ") as error:
        tiny_model().encode(images=images, batch_size=2)
    assert error.value.index == 5


def test_the_processor_records_the_settings_of_a_transformers_processor():
    from transformers import CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    clip = BT2ImageProcessor.from_image_processor(CLIPImageProcessor())
    assert clip.size == {"shortest_edge": 224} and clip.crop_size == {"height": 224, "width": 224}
    assert clip.resample == "bicubic" and clip.do_center_crop and clip.image_size == (224, 224)
    assert clip.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    convnext = BT2ImageProcessor.from_image_processor(ConvNextImageProcessor(size={"shortest_edge": 224}))
    assert convnext.size == {"shortest_edge": 256} and convnext.image_size == (224, 224)  # 224 / crop_pct 0.875
    assert BT2ImageProcessor.from_image_processor(ConvNextImageProcessor()).size == {"height": 384, "width": 384}
    vit = BT2ImageProcessor.from_image_processor(ViTImageProcessor(size={"height": 32, "width": 32}))
    assert vit.size == {"height": 32, "width": 32} and not vit.do_center_crop


def test_shortest_edge_resize_then_centre_crop_keeps_the_aspect_ratio():
    processor = BT2ImageProcessor(size={"shortest_edge": 4}, do_center_crop=True, crop_size=4, resample="nearest",
                                  num_channels=1, image_mean=0.0, image_std=1.0)  # fmt: skip
    # 4 × 8: left half 0, right half 255 → resized it stays 4 × 8, the centre crop keeps columns 2..5
    image = np.zeros((4, 8), np.uint8)
    image[:, 4:] = 255
    out = processor(image)["pixel_values"][0, 0]
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4))


def test_training_saves_the_processor_of_its_data_size(tmp_path):
    from training_helpers import quick_args, synthetic_data

    from bt2_hf.training import DataArguments, ModelArguments, train

    images, labels = synthetic_data(n=32, size=32)
    out = train(ModelArguments(backbone_config={"num_channels": 1, "widths": [8]}), DataArguments(),
                quick_args(tmp_path / "out", "independent", max_steps=1), train_data=(images, labels))  # fmt: skip
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.image_size == (32, 32)
    model = BT2Model.from_pretrained(out)
    assert model.config.backbone_config["image_size"] == [32, 32]


def test_a_processor_file_of_an_earlier_bt2_hf_still_loads(tmp_path):
    legacy = {"processor_class": "BT2ImageProcessor", "image_size": [28, 28], "num_channels": 1,
              "image_mean": [0.5], "image_std": [0.5]}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    processor = BT2ImageProcessor.from_json_file(tmp_path / "preprocessor_config.json")
    assert processor.size == {"height": 28, "width": 28} and processor.image_size == (28, 28)
    assert processor.to_dict()["image_processor_type"] == "BT2ImageProcessor"


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "bool"])
def test_a_4d_batch_gives_the_pixels_of_its_images_one_by_one(layout, dtype):
    processor = BT2ImageProcessor(size={"height": 12, "width": 12}, num_channels=3)
    images = np.stack([gradient(20, 16, channels=3), gradient(20, 16, channels=3)[::-1]])  # (2, H, W, 3)
    if dtype == "float32":
        images = images.astype(np.float32) / 255
    elif dtype == "bool":
        images = images > 100
    batch = images if layout == "channels_last" else images.transpose(0, 3, 1, 2)
    together = processor(batch, input_data_format=layout)["pixel_values"]
    one_by_one = torch.cat([processor([image], input_data_format=layout)["pixel_values"] for image in batch])
    torch.testing.assert_close(together, one_by_one, atol=1e-6, rtol=0)
    torch.testing.assert_close(processor(torch.from_numpy(batch), input_data_format=layout)["pixel_values"], together)


def test_a_bad_image_inside_a_4d_batch_is_named():
    batch = np.zeros((4, 1, 8, 8), np.float32)
    batch[2, 0, 3, 3] = 7.0
    with pytest.raises(ImageInputError, match=r"Image 2 is float with values in \[0, 7\]"):
        tiny_model().encode(images=batch)
