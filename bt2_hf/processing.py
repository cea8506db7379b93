"""Preprocessing saved next to the weights: an image processor for image backbones, a tokenizer for text ones.

:class:`BT2ImageProcessor` is a transformers image processor (``AutoImageProcessor`` loads it from any saved bt2_hf
image model once ``bt2_hf`` is imported; ``pipeline("image-feature-extraction", ...)`` uses it). It resizes and crops
each image on its own before batching, so a gallery of mixed sizes embeds in one call.

Image input contract (the one place it is defined; ``encode``, the pipeline and training all go through it):

- **What**: one image or a list/tuple of images. An image is a ``PIL.Image``, a numpy array or a torch tensor. A 4-D
  array or tensor is a batch of images.
- **Layout**: a 2-D array is one grayscale image ``(H, W)``. A 3-D array is an ``(H, W, C)`` or ``(C, H, W)`` image,
  read as transformers reads it (``infer_channel_dimension_format``): the end of the shape that is a channel count
  (1, 3 or 4) holds the channels. A shape where both ends could (``(3, H, 3)``), or neither, is refused unless
  ``input_data_format`` says ``"channels_last"`` or ``"channels_first"``; for a stack of grayscale images pass a list
  of 2-D arrays. A 4-D batch
  takes its channel axis from ``input_data_format``, or from its shape when only one of axes 1 and 3 can be a channel
  axis (1, 3 or 4 entries).
- **Dtype and range**: ``uint8`` is read as 0–255, ``uint16`` as 0–65535 (16-bit photos), ``bool`` as 0/1, floating
  point as values in [0, 1]. A float image outside [0, 1] is refused (divide 0–255 data by 255 first); other integer
  dtypes are refused (their range is unknown). NaN or infinite values are refused.
- **Channels**: grayscale (1), grayscale + alpha (2), RGB (3) and RGBA (4) are converted to the model's channels:
  alpha is dropped (as ``PIL``'s ``convert("RGB")`` does), grayscale is repeated to RGB, RGB becomes luma
  (ITU-R 601-2, as ``PIL``'s ``convert("L")``).
- **Errors**: an empty list, an empty image, a wrong rank or a bad value gets a ``ValueError`` naming the image's
  index in the input and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .utils.io import atomic_write_json

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
OPEN_CLIP_TOKENIZER_FILE = "open_clip_tokenizer_config.json"

# PIL's resampling filters by name and number (PIL.Image.Resampling values), as transformers' configs store them.
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights of PIL's convert("L")
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
# Channel counts a 3-D image's layout is inferred from (transformers' infer_channel_dimension_format, plus RGBA).
_INFERABLE_CHANNELS = (1, 3, 4)


class ImageInputError(ValueError):
    """An image given to :class:`BT2ImageProcessor` breaks the input contract (see the module docstring).

    ``index`` is the position of the offending image in the input (``None`` when the whole input is at fault).
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class BT2ImageProcessor(BaseImageProcessor):
    r"""Turns images (PIL, numpy, torch; any size) into the ``pixel_values`` of one bt2_hf image model.

    Each image is converted to float in [0, 1] and to the model's channels, resized (and centre-cropped) on its own,
    normalised, then the batch is stacked. The input contract is in the module docstring of ``bt2_hf.processing``.

    Args:
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 28, "width": 28}`):
            ``{"height": h, "width": w}`` resizes to exactly that size; ``{"shortest_edge": s}`` resizes the shorter
            side to ``s`` keeping the aspect ratio (then ``crop_size`` gives the output). An int is a square size.
        num_channels (`int`, *optional*, defaults to 1): 1 (grayscale) or 3 (RGB): the model's input channels.
        resample (`str` or `int`, *optional*, defaults to `"bilinear"`): ``"bilinear"``, ``"bicubic"`` or
            ``"nearest"`` (or PIL's filter number, as transformers configs store it). Downscaling is antialiased.
        do_center_crop (`bool`, *optional*, defaults to `False`): centre-crop to ``crop_size`` after resizing.
        crop_size (`dict[str, int]` or `int`, *optional*): ``{"height": h, "width": w}`` of the centre crop.
        image_mean (`float` or `list[float]`, *optional*, defaults to 0.5): per-channel mean of the [0, 1] values.
        image_std (`float` or `list[float]`, *optional*, defaults to 0.5): per-channel standard deviation.
        source (`str`, *optional*): where these settings came from (e.g. the pretrained backbone's processor), kept
            for the record.
        image_size (`int` or `tuple[int, int]`, *optional*): shorthand for ``size={"height": .., "width": ..}``
            (also how earlier bt2_hf versions stored the size).

    Example:

    ```python
    >>> import numpy as np
    >>> from bt2_hf import BT2ImageProcessor
    >>> processor = BT2ImageProcessor(size={"height": 28, "width": 28}, num_channels=1)
    >>> images = [np.zeros((28, 28), dtype=np.uint8), np.full((40, 33), 255, dtype=np.uint8)]
    >>> processor(images)["pixel_values"].shape
    torch.Size([2, 1, 28, 28])
    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: dict[str, int] | int | Sequence[int] | None = None,
        num_channels: int = 1,
        resample: str | int = "bilinear",
        do_center_crop: bool = False,
        crop_size: dict[str, int] | int | Sequence[int] | None = None,
        image_mean: float | Sequence[float] = 0.5,
        image_std: float | Sequence[float] = 0.5,
        source: str | None = None,
        image_size: int | Sequence[int] | None = None,
        **kwargs: Any,
    ):
        # Keys transformers writes into every processor file (or that our earlier format had); not settings of ours.
        for key in ("image_processor_type", "processor_class", "_valid_kwargs_names"):
            kwargs.pop(key, None)
        if kwargs:
            raise ValueError(
                f"BT2ImageProcessor got unknown settings {sorted(kwargs)}; valid ones are size, num_channels, "
                "resample, do_center_crop, crop_size, image_mean, image_std, source."
            )
        super().__init__()
        if size is not None and image_size is not None:
            raise ValueError("Pass either size or image_size (its shorthand), not both.")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        self.size = _size_dict(size if size is not None else (image_size if image_size is not None else 28), "size")
        self.num_channels = int(num_channels)
        self.resample = _resample_name(resample)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size_dict(crop_size, "crop_size") if crop_size is not None else None
        if "shortest_edge" in self.size and not self.do_center_crop:
            raise ValueError(
                "size={'shortest_edge': ...} keeps each image's aspect ratio, so images of different shapes would not "
                "batch: also set do_center_crop=True with a crop_size."
            )
        if self.do_center_crop and (self.crop_size is None or "shortest_edge" in self.crop_size):
            raise ValueError("do_center_crop=True needs crop_size={'height': h, 'width': w}.")
        self.image_mean = _per_channel(image_mean, self.num_channels, "image_mean")
        self.image_std = _per_channel(image_std, self.num_channels, "image_std")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        self.source = source

    # ----------------------------------------------------------------------------------------------- settings

    @property
    def image_size(self) -> tuple[int, int]:
        """The ``(height, width)`` of the ``pixel_values`` this processor outputs."""
        final = self.crop_size if self.do_center_crop else self.size
        return int(final["height"]), int(final["width"])

    def to_dict(self) -> dict[str, Any]:
        output = {
            "image_processor_type": type(self).__name__,
            "size": dict(self.size),
            "num_channels": self.num_channels,
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": dict(self.crop_size) if self.crop_size is not None else None,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        if self.source:
            output["source"] = self.source
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> list:
        """Write ``preprocessor_config.json`` (atomically) into ``save_directory``."""
        if push_to_hub:
            return super().save_pretrained(save_directory, push_to_hub=True, **kwargs)
        path = Path(save_directory) / IMAGE_PROCESSOR_FILE
        atomic_write_json(path, self.to_dict())
        return [str(path)]

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> BT2ImageProcessor:
        with open(json_file, encoding="utf-8") as handle:
            try:
                settings = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{json_file} is not valid JSON ({error}); re-save the model's processor.") from None
        return cls.from_dict(settings)

    @classmethod
    def from_image_processor(cls, processor: Any, source: str | None = None) -> BT2ImageProcessor:
        """The same preprocessing as a transformers image processor (ViT, ConvNeXt, CLIP, ResNet …).

        Reads its ``size`` (``height``/``width`` or ``shortest_edge``, with ConvNeXt's ``crop_pct``), centre crop,
        resampling filter and mean/std. Images are always scaled to [0, 1] first (transformers' ``rescale_factor``
        of 1/255 on 0–255 input), so a processor with another rescale factor, or none, is refused.
        """
        get = (
            processor.get
            if isinstance(processor, dict)
            else lambda key, default=None: getattr(processor, key, default)
        )
        if get("do_rescale", True) is False or not math.isclose(
            float(get("rescale_factor", 1 / 255) or 1 / 255), 1 / 255
        ):
            raise ValueError(
                f"{type(processor).__name__} does not scale pixels to [0, 1] with 1/255; BT2ImageProcessor cannot "
                "reproduce it. Pass a BT2ImageProcessor with the settings you want."
            )
        size = _size_dict(get("size") or {"height": 224, "width": 224}, "size")
        crop_size = get("crop_size")
        do_center_crop = bool(get("do_center_crop", False)) and crop_size is not None
        crop_pct = get("crop_pct")
        if "shortest_edge" in size and crop_pct and not do_center_crop:
            # ConvNeXt: below 384 resize the short side to shortest_edge / crop_pct, then centre-crop shortest_edge;
            # from 384 on, warp to a square of shortest_edge (transformers' ConvNextImageProcessor)
            edge = int(size["shortest_edge"])
            if edge < 384:
                size, crop_size, do_center_crop = {"shortest_edge": int(edge / crop_pct)}, edge, True
            else:
                size = {"height": edge, "width": edge}
        elif "shortest_edge" in size and not do_center_crop:
            edge = int(size["shortest_edge"])
            crop_size, do_center_crop = edge, True
        mean, std = get("image_mean"), get("image_std")
        if not get("do_normalize", True):
            mean, std = 0.0, 1.0
        channels = 3
        return cls(
            size=size,
            num_channels=channels,
            resample=get("resample", 2) if get("resample", 2) is not None else 2,
            do_center_crop=do_center_crop,
            crop_size=crop_size if do_center_crop else None,
            image_mean=mean if mean is not None else 0.5,
            image_std=std if std is not None else 0.5,
            source=source,
        )

    # ------------------------------------------------------------------------------------------- preprocessing

    def __call__(self, images: Any = None, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        device: str | torch.device | None = None,
        index_offset: int = 0,
        **unused: Any,
    ) -> BatchFeature:
        """Preprocess one image or a list of images into ``{"pixel_values": (B, C, H, W) float tensor}``.

        Args:
            images: one image, a list of images, or a 4-D batch (see the input contract in the module docstring).
            return_tensors (`str`, *optional*, defaults to `"pt"`): ``"pt"`` (torch) or ``"np"`` (numpy).
            input_data_format (`str`, *optional*): ``"channels_last"`` (``(H, W, C)`` images) or
                ``"channels_first"`` (``(C, H, W)``) for 3-D arrays and tensors; inferred from the shape when only
                one end of it can be a channel count (1, 3 or 4).
            device (`str` or `torch.device`, *optional*): where to resize and normalise.
            index_offset (`int`, *optional*, defaults to 0): added to the image indices that errors name (for
                callers that preprocess a long input in chunks, such as ``BT2Model.encode``).
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        input_data_format = _data_format(input_data_format)
        batch = _as_float_batch(images, input_data_format, self.num_channels)
        if batch is not None:  # a valid 4-D batch: one vectorised pass (same numbers as the per-image path)
            pixel_values = self.transform(batch, device=device)
        else:
            pixel_values = torch.stack(
                [
                    self.transform(image, device=device)
                    for image in _as_float_images(images, input_data_format, self.num_channels, index_offset)
                ]
            )
        if return_tensors == "np":
            pixel_values = pixel_values.cpu().numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def transform(self, images: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
        """Resize, crop and normalise float [0, 1] images of one shape, ``(C, H, W)`` or ``(B, C, H, W)``.

        The maths of :meth:`preprocess` after the input checks; training applies it to whole batches on the GPU so
        that the model sees exactly what ``encode`` and the pipeline give it.
        """
        single = images.ndim == 3
        batch = images[None] if single else images
        if device is not None:
            batch = batch.to(device)
        batch = _convert_channels(batch.float(), self.num_channels)
        height, width = batch.shape[-2:]
        if "shortest_edge" in self.size:
            edge = int(self.size["shortest_edge"])
            scale = edge / min(height, width)
            target = (max(edge, round(height * scale)), max(edge, round(width * scale)))
        else:
            target = (int(self.size["height"]), int(self.size["width"]))
        if target != (height, width):
            mode = _TORCH_MODES[self.resample]
            kwargs = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
            batch = F.interpolate(batch, size=target, mode=mode, **kwargs)
            if mode == "bicubic":
                batch = batch.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clamps to the pixel range as well
        if self.do_center_crop:
            batch = _center_crop(batch, int(self.crop_size["height"]), int(self.crop_size["width"]))
        mean = torch.tensor(self.image_mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, device=batch.device).view(1, -1, 1, 1)
        batch = (batch - mean) / std
        return batch[0] if single else batch


class OpenCLIPTokenizer:
    """open_clip's tokenizer behind the transformers call convention (``{"input_ids": ...}``), saved by name."""

    def __init__(self, model_name: str | None = None, context_length: int = 77):
        from .utils.imports import require

        open_clip = require("open_clip", extra="open_clip")
        self.model_name = model_name
        self.context_length = int(context_length)
        if model_name:
            self._tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        else:
            self._tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)

    def __call__(
        self, texts: str | Sequence[str], return_tensors: str = "pt", **unused: Any
    ) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return {"input_ids": self._tokenizer(texts)}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        atomic_write_json(
            Path(save_directory) / OPEN_CLIP_TOKENIZER_FILE,
            {"model_name": self.model_name, "context_length": self.context_length},
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> OpenCLIPTokenizer:
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def open_clip_image_processor(image_size: int | Sequence[int], preprocess_cfg: dict[str, Any] | None = None,
                              source: str | None = None) -> BT2ImageProcessor:  # fmt: skip
    """open_clip's evaluation preprocessing (``preprocess_cfg``: size, mean/std, interpolation, resize mode).

    open_clip's default ``resize_mode="shortest"`` resizes the short side then centre-crops (bicubic, OpenAI mean/std);
    ``"squash"`` resizes to the exact size. ``"longest"`` (padding) is not reproduced and is refused.
    """
    cfg = {
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    } | {k: v for k, v in (preprocess_cfg or {}).items() if v is not None}
    size = cfg.get("size", image_size)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if cfg["resize_mode"] == "shortest":
        if height != width:
            raise ValueError(f"open_clip's 'shortest' resize mode needs a square image size, got {size}.")
        geometry = {"size": {"shortest_edge": height}, "do_center_crop": True, "crop_size": {"height": height, "width": width}}  # fmt: skip
    elif cfg["resize_mode"] == "squash":
        geometry = {"size": {"height": height, "width": width}}
    else:
        raise ValueError(
            f"open_clip resize_mode {cfg['resize_mode']!r} is not supported (use 'shortest' or 'squash')."
        )
    return BT2ImageProcessor(
        num_channels=3,
        resample=cfg["interpolation"],
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        source=source or "open_clip preprocess config",
        **geometry,
    )


def _as_float_images(
    images: Any, input_data_format: str | None, num_channels: int, index_offset: int = 0
) -> list[torch.Tensor]:
    """Every image of the input as a float ``(C, H, W)`` tensor in [0, 1], checked; errors name the image's index."""
    if images is None:
        raise ImageInputError("No images given: pass one image or a list of images (PIL, numpy or torch).")
    if isinstance(images, (list, tuple)):
        items = list(images)
        if not items:
            raise ImageInputError("The list of images is empty: pass at least one image.")
    elif _is_array(images) and images.ndim == 4:
        channel_axis = _batch_channel_axis(images.shape, input_data_format)
        fmt = CHANNELS_FIRST if channel_axis == 1 else CHANNELS_LAST
        if images.shape[0] == 0:
            raise ImageInputError("The batch of images is empty: pass at least one image.")
        return [_to_float_chw(images[i], index_offset + i, fmt, num_channels) for i in range(images.shape[0])]
    else:
        items = [images]
    return [_to_float_chw(image, index_offset + i, input_data_format, num_channels) for i, image in enumerate(items)]


def _as_float_batch(images: Any, input_data_format: str | None, num_channels: int) -> torch.Tensor | None:
    """A 4-D uint8, bool or float batch as one float ``(B, C, H, W)`` tensor in [0, 1], or `None`.

    `None` sends the input to the per-image path: anything else (lists, other dtypes) and any batch that fails a
    check, so that the error names the offending image.
    """
    if not (_is_array(images) and images.ndim == 4) or images.shape[0] == 0:
        return None
    try:
        channel_axis = _batch_channel_axis(images.shape, input_data_format)
    except ImageInputError:
        return None
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "buf" or images.dtype == np.uint16 or images.dtype.itemsize > 8:
            return None
        tensor = torch.from_numpy(np.array(images, copy=not images.flags.writeable or None))
    else:
        tensor = images.detach().cpu()
    if channel_axis == 3:
        tensor = tensor.permute(0, 3, 1, 2)
    channels, height, width = tensor.shape[1:]
    if channels not in (1, 2, 3, 4) or height == 0 or width == 0:
        return None
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.dtype == torch.bool:
        tensor = tensor.float()
    elif torch.is_floating_point(tensor):
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()) or float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0:
            return None
    else:
        return None
    if channels in (2, 4):  # drop alpha
        tensor = tensor[:, : channels - 1]
    return _convert_channels(tensor, num_channels)


def _to_float_chw(image: Any, index: int, input_data_format: str | None, num_channels: int) -> torch.Tensor:
    try:
        return _checked_float_chw(image, index, input_data_format, num_channels)
    except ImageInputError as error:
        if error.index is None:
            error.index = index
        raise


def _checked_float_chw(image: Any, index: int, input_data_format: str | None, num_channels: int) -> torch.Tensor:
    where = f"Image {index}"
    if _is_pil(image):
        image = _pil_to_array(image, where)
        input_data_format = CHANNELS_LAST
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch has limited uint16 support: scale here
            tensor = torch.from_numpy(image.astype(np.float32) / 65535.0)
        elif image.dtype.kind in "OUSV":
            raise ImageInputError(f"{where} is a numpy array of {image.dtype}, not pixel values.")
        else:
            tensor = torch.from_numpy(np.array(image, copy=not image.flags.writeable or None))
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.float32) / 65535.0
    else:
        raise ImageInputError(
            f"{where} has unsupported type {type(image).__name__}; pass PIL images, numpy arrays or torch tensors."
        )
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        if input_data_format is None:
            input_data_format = _inferred_data_format(tuple(tensor.shape), where)
        if input_data_format == CHANNELS_LAST:
            tensor = tensor.permute(2, 0, 1)
    else:
        raise ImageInputError(
            f"{where} has {tensor.ndim} dimensions (shape {tuple(tensor.shape)}); an image is 2-D (H, W) or 3-D "
            "(with input_data_format), a batch is 4-D."
        )
    channels, height, width = tensor.shape
    if height == 0 or width == 0 or channels == 0:
        raise ImageInputError(f"{where} is empty (shape {tuple(tensor.shape)}).")
    if channels not in (1, 2, 3, 4):
        raise ImageInputError(
            f"{where} has {channels} channels (shape {tuple(tensor.shape)}, read as {input_data_format or 'C, H, W'}); "
            "images have 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or 4 (RGBA). Check input_data_format."
        )
    tensor = _to_unit_range(tensor, where)
    if channels in (2, 4):  # drop alpha
        tensor = tensor[: channels - 1]
    return _convert_channels(tensor[None], num_channels)[0]


def _inferred_data_format(shape: tuple[int, ...], where: str) -> str:
    """The channel axis of a 3-D image read as transformers reads it: the one end of the shape that can be a channel
    count (1, 3 or 4). When both ends can (``(3, H, 3)``) the image is refused instead of guessed."""
    from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

    first, last = shape[0] in _INFERABLE_CHANNELS, shape[-1] in _INFERABLE_CHANNELS
    if first and last:
        raise ImageInputError(
            f"{where} has shape {shape}: both its first and its last axis could hold the channels, so it could be an "
            "(H, W, C) or a (C, H, W) image. Pass input_data_format='channels_last' for (H, W, C) or "
            "'channels_first' for (C, H, W)."
        )
    if not (first or last):
        raise ImageInputError(
            f"{where} is a 3-D array of shape {shape}: neither end is a channel count (1, 3 or 4), so it is no (H, W, C) "
            "or (C, H, W) image. For several grayscale images pass a list of 2-D arrays; for 2-channel images "
            "(grayscale + alpha) pass input_data_format='channels_last' or 'channels_first'."
        )
    inferred = infer_channel_dimension_format(np.empty(shape, dtype=np.uint8), num_channels=_INFERABLE_CHANNELS)
    return CHANNELS_FIRST if inferred == ChannelDimension.FIRST else CHANNELS_LAST


def _to_unit_range(tensor: torch.Tensor, where: str) -> torch.Tensor:
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if tensor.dtype == torch.bool:
        return tensor.float()
    if not torch.is_floating_point(tensor):
        raise ImageInputError(
            f"{where} has dtype {tensor.dtype}, whose value range is unknown. Pass uint8 (0-255), uint16 (0-65535) "
            "or float in [0, 1] (e.g. array.astype('uint8') for 0-255 values)."
        )
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise ImageInputError(f"{where} contains NaN or infinite values.")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        hint = " It looks like 0-255 data: divide it by 255 (or pass uint8)." if high <= 255.0 and low >= 0.0 else ""
        raise ImageInputError(
            f"{where} is float with values in [{low:g}, {high:g}]; float images must be in [0, 1].{hint}"
        )
    return tensor


def _convert_channels(batch: torch.Tensor, num_channels: int) -> torch.Tensor:
    channels = batch.shape[1]
    if channels == num_channels:
        return batch
    if num_channels == 3 and channels == 1:
        return batch.expand(-1, 3, -1, -1)
    if num_channels == 1 and channels == 3:
        weights = torch.tensor(_LUMA, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
        return (batch * weights).sum(dim=1, keepdim=True)
    raise ImageInputError(f"Cannot convert {channels}-channel images to {num_channels} channels.")


def _center_crop(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    in_height, in_width = batch.shape[-2:]
    if in_height < height or in_width < width:  # pad symmetrically with zeros, as transformers' center_crop does
        pad_h, pad_w = max(height - in_height, 0), max(width - in_width, 0)
        batch = F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        in_height, in_width = batch.shape[-2:]
    top = (in_height - height) // 2
    left = (in_width - width) // 2
    return batch[..., top : top + height, left : left + width]


def _batch_channel_axis(shape: Sequence[int], input_data_format: str | None) -> int:
    if input_data_format == CHANNELS_FIRST:
        return 1
    if input_data_format == CHANNELS_LAST:
        return 3
    first, last = shape[1] in (1, 2, 3, 4), shape[3] in (1, 2, 3, 4)
    if first != last:
        return 1 if first else 3
    raise ImageInputError(
        f"The 4-D batch of shape {tuple(shape)} could be (B, C, H, W) or (B, H, W, C); pass "
        "input_data_format='channels_first' or 'channels_last'."
    )


def _data_format(value: Any) -> str | None:
    if value is None:
        return None
    value = getattr(value, "value", value)  # transformers' ChannelDimension enum
    aliases = {"channels_first": CHANNELS_FIRST, "channels_last": CHANNELS_LAST}
    if value not in aliases:
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {value!r}.")
    return aliases[value]


def _pil_to_array(image: Any, where: str) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.uint16)
    if mode in ("I", "F"):
        raise ImageInputError(
            f"{where} is a PIL image in mode {mode!r} (32-bit values of unknown range); convert it to 'L', 'RGB' "
            "or 'I;16' first."
        )
    if mode in ("L", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    has_alpha = mode in ("PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if has_alpha else ("L" if mode == "1" else "RGB")))


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "mode") and hasattr(image, "convert")


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _size_dict(value: Any, name: str) -> dict[str, int]:
    if not isinstance(value, (dict, int, Sequence)) and hasattr(value, "__dataclass_fields__"):
        value = {k: v for k, v in vars(value).items() if v is not None}  # transformers' SizeDict
    if isinstance(value, dict):
        if set(value) == {"height", "width"}:
            size = {"height": int(value["height"]), "width": int(value["width"])}
        elif set(value) == {"shortest_edge"}:
            size = {"shortest_edge": int(value["shortest_edge"])}
        else:
            raise ValueError(f"{name} must be {{'height', 'width'}} or {{'shortest_edge'}}, got {value}.")
    elif isinstance(value, int):
        size = {"height": int(value), "width": int(value)}
    elif isinstance(value, Sequence) and len(value) == 2:
        size = {"height": int(value[0]), "width": int(value[1])}
    else:
        raise ValueError(f"{name} must be an int, (height, width) or a dict, got {value!r}.")
    if any(v <= 0 for v in size.values()):
        raise ValueError(f"{name} must be positive, got {size}.")
    return size


def _resample_name(value: Any) -> str:
    name = _RESAMPLE_NAMES.get(value, value) if isinstance(value, int) else getattr(value, "name", value)
    name = str(name).lower()
    if name not in _TORCH_MODES:
        raise ValueError(f"resample must be one of {sorted(_TORCH_MODES)} (or PIL's number), got {value!r}.")
    return name


def _per_channel(value: float | Sequence[float], num_channels: int, name: str) -> list[float]:
    values = [float(value)] * num_channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1 and num_channels == 3:
        values = values * 3
    if len(values) != num_channels:
        raise ValueError(f"{name} needs {num_channels} values (one per channel), got {len(values)}.")
    return values
