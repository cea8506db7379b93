"""Captions for image–text compatibility: class-name templates, image–text datasets, and (image_id, caption) rows.

Classification sets (Fashion-MNIST, CIFAR, ImageNet) have no captions, so class-level captions are generated from the
class names with several templates ("a photo of a sneaker", "a product photo of an ankle boot", …), as zero-shot
CLIP evaluation does. The templates are split into a training set and a held-out set, so that text→image retrieval is
measured on sentences the text tower never saw.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# The first TRAIN templates are used for training, the rest are held out for evaluation (see `split_templates`).
DEFAULT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {article} {name}.",
    "a black and white photo of {article} {name}.",
    "a low resolution photo of {article} {name}.",
    "{article} {name}.",
    "a picture of {article} {name}.",
    "a product photo of {article} {name}.",
    "a close-up photo of {article} {name}.",
    "an image showing {article} {name}.",
    "a grayscale image of {article} {name}.",
    "a small photo of {article} {name}.",
    "a catalogue image of {article} {name}.",
    "a pixelated picture of {article} {name}.",
)
NUM_TRAIN_TEMPLATES = 8

# Names that read badly when lower-cased as they are ("t-shirt/top") get a caption-friendly form.
_CAPTION_NAMES = {"t-shirt/top": "t-shirt or top"}


def caption_name(class_name: str) -> str:
    """The class name as it reads inside a sentence: lower case, ``/`` spelled out (``"T-shirt/top"`` → ``"t-shirt or top"``)."""
    name = class_name.strip().lower()
    return _CAPTION_NAMES.get(name, name.replace("_", " ").replace("/", " or "))


def _article(name: str) -> str:
    return "an" if name[:1] in "aeiou" else "a"


def render_caption(template: str, class_name: str) -> str:
    """Fill one template with a class name (``{name}``, ``{article}`` = "a"/"an")."""
    name = caption_name(class_name)
    return template.format(name=name, article=_article(name))


def split_templates(
    templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES, num_train: int = NUM_TRAIN_TEMPLATES
) -> tuple[list[str], list[str]]:
    """Split templates into (training, held-out evaluation) templates, in order.

    Args:
        templates (`Sequence[str]`, *optional*): the templates; defaults to :data:`DEFAULT_CAPTION_TEMPLATES`.
        num_train (`int`, *optional*, defaults to 8): how many go to training.
    """
    if not 0 < num_train < len(templates):
        raise ValueError(f"num_train must be in [1, {len(templates) - 1}] for {len(templates)} templates.")
    return list(templates[:num_train]), list(templates[num_train:])


def class_captions(
    class_names: Sequence[str], templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES
) -> tuple[list[str], list[int]]:
    """Every template rendered for every class.

    Args:
        class_names (`Sequence[str]`): one name per class id.
        templates (`Sequence[str]`, *optional*): templates with ``{name}`` (and optionally ``{article}``).

    Returns:
        `(captions, labels)`: ``len(class_names) * len(templates)`` captions, class-major, and their class ids.

    >>> captions, labels = class_captions(["Sneaker", "Ankle boot"], ["a photo of {article} {name}."])
    >>> captions, labels
    (['a photo of a sneaker.', 'a photo of an ankle boot.'], [0, 1])
    """
    if not templates:
        raise ValueError("Give at least one caption template.")
    captions, labels = [], []
    for label, class_name in enumerate(class_names):
        for template in templates:
            captions.append(render_caption(template, class_name))
            labels.append(label)
    return captions, labels


def build_image_text_dataset(
    images: Any,
    labels: Sequence[int],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES,
    captions_per_image: int = 3,
    image_ids: Sequence[Any] | None = None,
    seed: int = 0,
):
    """A `datasets.Dataset` with ``image``, ``image_id``, ``label`` and ``captions`` columns from a classification set.

    Each image gets ``captions_per_image`` class-level captions drawn (without replacement) from the templates.
    Datasets with real captions (COCO, Flickr30k) already have this layout and go straight to
    :func:`flatten_captions`.

    Args:
        images (uint8 array or tensor of shape `(N, H, W)` or `(N, C, H, W)`, or a list of PIL images): the images.
        labels (`Sequence[int]`): their class ids.
        class_names (`Sequence[str]`): one name per class id.
        templates (`Sequence[str]`, *optional*): caption templates.
        captions_per_image (`int`, *optional*, defaults to 3): captions per image (at most ``len(templates)``).
        image_ids (`Sequence`, *optional*): ids of the images; defaults to ``0 .. N-1``.
        seed (`int`, *optional*, defaults to 0): seed of the template draw.

    Returns:
        `datasets.Dataset`.
    """
    import datasets
    from PIL import Image

    if not 0 < captions_per_image <= len(templates):
        raise ValueError(f"captions_per_image must be in [1, {len(templates)}], got {captions_per_image}.")
    labels = [int(label) for label in labels]
    if isinstance(images, (list, tuple)):
        pil_images = list(images)
    else:
        array = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
        if array.ndim == 4:  # (N, C, H, W) → (N, H, W[, C])
            array = array[:, 0] if array.shape[1] == 1 else np.transpose(array, (0, 2, 3, 1))
        pil_images = [Image.fromarray(np.ascontiguousarray(item)) for item in array]
    if len(pil_images) != len(labels):
        raise ValueError(f"{len(pil_images)} images but {len(labels)} labels.")
    image_ids = list(range(len(labels))) if image_ids is None else list(image_ids)
    if len(image_ids) != len(labels):
        raise ValueError(f"{len(image_ids)} image ids for {len(labels)} images.")
    rng = random.Random(seed)
    captions = [
        [render_caption(t, class_names[label]) for t in rng.sample(list(templates), captions_per_image)]
        for label in labels
    ]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64")
            if all(isinstance(i, int) for i in image_ids)
            else datasets.Value("string"),
            "label": datasets.ClassLabel(names=[str(n) for n in class_names]),
            "captions": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": pil_images, "image_id": image_ids, "label": labels, "captions": captions}, features=features
    )


def flatten_captions(dataset, caption_column: str = "captions", id_column: str = "image_id"):
    """One row per (image, caption): ``image_id``, ``caption`` (and ``label`` when the dataset has one).

    The text→image evaluator takes these rows as queries, each relevant to its own ``image_id`` in the gallery.

    Args:
        dataset (`datasets.Dataset`): with a list-of-strings ``caption_column`` and an ``id_column``.
        caption_column (`str`, *optional*, defaults to `"captions"`): the captions column.
        id_column (`str`, *optional*, defaults to `"image_id"`): the image id column.

    Returns:
        `datasets.Dataset` with columns ``image_id``, ``caption`` and optionally ``label``.
    """
    import datasets

    for column in (caption_column, id_column):
        if column not in dataset.column_names:
            raise ValueError(f"The dataset has no {column!r} column (columns: {dataset.column_names}).")
    has_label = "label" in dataset.column_names
    # Read only the small columns: never decode the images to flatten.
    ids, caption_lists = dataset[id_column], dataset[caption_column]
    labels = dataset["label"] if has_label else None
    rows: dict[str, list] = {"image_id": [], "caption": []}
    if has_label:
        rows["label"] = []
    for row, (image_id, captions) in enumerate(zip(ids, caption_lists)):
        for caption in captions:
            rows["image_id"].append(image_id)
            rows["caption"].append(caption)
            if has_label:
                rows["label"].append(labels[row])
    return datasets.Dataset.from_dict(rows)
