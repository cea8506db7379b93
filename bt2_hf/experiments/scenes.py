"""Procedural image–caption scenes: an instance-level text → image data set that runs offline.

Each image is a small scene of 1–3 objects on a noisy background. Every object has a shape, a colour, a size and a
position (one cell of a 3×3 grid, at most one object per cell). Each image has one caption, written by a small
grammar that describes some of the objects with some of their attributes, in one of several phrasings.

**Relevance is exact.** A caption is a set of constraints (its *caption attributes*): a list of partial object
descriptions, and optionally the exact number of objects. An image is relevant to a caption iff the descriptions can
be given to *distinct* objects of the image, each object having every attribute its description names (an attribute
a description leaves out matches anything), and the object count is the one the caption states, if it states one.
The caption's own image is always relevant; other images often are too, so text → image search is scored over all
relevant images (:mod:`bt2_hf.retrieval.instance_metrics`). :func:`scene_relevance` computes the whole matrix.

**The test split measures generalisation**:

- held-out (shape, colour) pairs (:data:`DEFAULT_HELD_OUT_PAIRS`) never occur in a training or validation image, and
  so never in their captions; a test scene that is drawn as *novel pair* puts one on the object its caption
  describes first;
- held-out phrasings: the templates marked ``test_only`` are never used outside the test split.

Each test example records ``novel_pair`` / ``novel_template`` so that results can be broken down. The validation
split is carved from the training distribution (same rules, different scenes), for choosing settings without ever
looking at the test split.

Everything is a deterministic function of the seed: scene ``i`` of a split is drawn from its own generator seeded by
``(seed, split, i)``, so the same seed gives byte-identical PNGs and captions, and a larger split extends a smaller
one with the same first scenes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
COLOURS = {
    "red": (220, 45, 45),
    "orange": (240, 140, 30),
    "yellow": (235, 220, 50),
    "green": (50, 180, 70),
    "blue": (50, 95, 235),
    "purple": (150, 65, 205),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
# Grid cells, row by row from the top left; each name is the position's word in captions and in the attributes.
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
_POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
# One pair per shape, each with a different colour: every shape and every colour is still seen in training, only
# these combinations are not.
DEFAULT_HELD_OUT_PAIRS = (
    ("circle", "purple"),
    ("square", "yellow"),
    ("triangle", "blue"),
    ("cross", "green"),
    ("diamond", "orange"),
    ("ring", "red"),
)
OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")
SPLITS = ("train", "validation", "test")
# Sizes of the splits: the CPU recipe's default, and a tiny one for tests.
SCENE_PRESETS = {"default": (6000, 1000, 1000), "tiny": (48, 16, 16)}
SCENES_CONFIG_NAME = "scenes_config.json"
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class CaptionTemplate:
    """One phrasing of the caption grammar.

    Args:
        name (`str`): identifier, recorded with each caption (``template`` column).
        pattern (`str`): the text, with ``{size0}``, ``{colour0}``, ``{shape0}``, ``{where0}`` (``"on the left"``),
            ``{place0}`` (``"left"``) for the first described object, ``...1`` for the second, and ``{count}`` (the
            number of objects in words). ``"a"`` before a vowel becomes ``"an"``.
        mentions (`tuple[tuple[str, ...], ...]`): the attributes the caption states, per described object; this is
            what the caption's constraints hold (and so what relevance checks), whatever the wording.
        states_count (`bool`): whether the caption states the exact number of objects.
        min_objects (`int`): the fewest objects a scene needs for this template.
        test_only (`bool`): a held-out phrasing, used only in the test split.
    """

    name: str
    pattern: str
    mentions: tuple[tuple[str, ...], ...]
    states_count: bool = False
    min_objects: int = 1
    test_only: bool = False


_ALL = ("size", "colour", "shape", "position")
TEMPLATES = (
    CaptionTemplate("full", "a {size0} {colour0} {shape0} {where0}", (_ALL,)),
    CaptionTemplate("label", "{place0}: a {size0} {colour0} {shape0}", (_ALL,)),
    CaptionTemplate("colour_shape", "a {colour0} {shape0}", (("colour", "shape"),)),
    CaptionTemplate(
        "pair", "there is a {colour0} {shape0} and a {colour1} {shape1}", (("colour", "shape"),) * 2, min_objects=2
    ),
    CaptionTemplate(
        "pair_where",
        "a {colour0} {shape0} {where0} and a {colour1} {shape1} {where1}",
        (("colour", "shape", "position"),) * 2,
        min_objects=2,
    ),
    CaptionTemplate(
        "count",
        "{count} objects, one of them a {size0} {colour0} {shape0}",
        (("size", "colour", "shape"),),
        states_count=True,
        min_objects=2,
    ),
    # Held-out phrasings: only in the test split.
    CaptionTemplate("that_is", "a {size0} {shape0} that is {colour0}, {where0}", (_ALL,), test_only=True),
    CaptionTemplate(
        "where_first", "{where0} there is a {colour0} {shape0}", (("colour", "shape", "position"),), test_only=True
    ),
    CaptionTemplate(
        "together",
        "a {colour0} {shape0} together with a {size1} {colour1} {shape1}",
        (("colour", "shape"), ("size", "colour", "shape")),
        min_objects=2,
        test_only=True,
    ),
    CaptionTemplate(
        "exactly",
        "exactly {count} shapes, including a {colour0} {shape0}",
        (("colour", "shape"),),
        states_count=True,
        min_objects=2,
        test_only=True,
    ),
)


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and rendered (saved beside a generated data set as ``scenes_config.json``).

    Args:
        seed (`int`): the one seed every split derives from.
        num_train, num_validation, num_test (`int`): split sizes.
        image_size (`int`, *optional*, defaults to 32): side of the square RGB images, in pixels (at least 24).
        min_objects, max_objects (`int`, *optional*, default to 1 and 3): objects per scene, drawn uniformly.
        held_out_pairs (`tuple[tuple[str, str], ...]`): (shape, colour) pairs kept out of training and validation.
        test_novel_pair_fraction (`float`, *optional*, defaults to 0.5): share of test scenes whose first described
            object has a held-out pair (the others contain no held-out pair at all).
        test_novel_template_fraction (`float`, *optional*, defaults to 0.5): share of test captions written with a
            held-out phrasing.
        noise_std (`float`, *optional*, defaults to 6.0): standard deviation of the background's pixel noise (0–255).
    """

    seed: int = 0
    num_train: int = SCENE_PRESETS["default"][0]
    num_validation: int = SCENE_PRESETS["default"][1]
    num_test: int = SCENE_PRESETS["default"][2]
    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    held_out_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELD_OUT_PAIRS
    test_novel_pair_fraction: float = 0.5
    test_novel_template_fraction: float = 0.5
    noise_std: float = 6.0
    shapes: tuple[str, ...] = field(default=SHAPES)
    colours: tuple[str, ...] = field(default=tuple(COLOURS))

    def __post_init__(self):
        object.__setattr__(self, "held_out_pairs", tuple(tuple(pair) for pair in self.held_out_pairs))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colours", tuple(self.colours))
        problems = []
        if self.image_size < 24:
            problems.append(f"image_size must be at least 24 pixels (got {self.image_size})")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            problems.append(
                f"need 1 <= min_objects <= max_objects <= {len(POSITIONS)} (got {self.min_objects}, {self.max_objects})"
            )
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("test_novel_pair_fraction", "test_novel_template_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        unknown_shapes = sorted(set(self.shapes) - set(SHAPES))
        unknown_colours = sorted(set(self.colours) - set(COLOURS))
        if unknown_shapes or unknown_colours:
            problems.append(f"unknown shapes {unknown_shapes} / colours {unknown_colours}; choose from {SHAPES}, "
                            f"{tuple(COLOURS)}")  # fmt: skip
        for shape, colour in self.held_out_pairs:
            if shape not in self.shapes or colour not in self.colours:
                problems.append(f"held-out pair ({shape!r}, {colour!r}) is not made of the configured shapes/colours")
        if len(set(self.held_out_pairs)) >= len(self.shapes) * len(self.colours):
            problems.append("every (shape, colour) pair is held out; training scenes would have no object to draw")
        if self.test_novel_pair_fraction > 0 and self.num_test > 0 and not self.held_out_pairs:
            problems.append("test_novel_pair_fraction > 0 needs at least one held-out pair")
        if problems:
            raise ValueError("Invalid scene settings: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict:
        """JSON-able settings (pairs as lists)."""
        out = asdict(self)
        out["held_out_pairs"] = [list(pair) for pair in self.held_out_pairs]
        out["shapes"], out["colours"] = list(self.shapes), list(self.colours)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Drawing scenes and captions
# ---------------------------------------------------------------------------------------------------------------


def _split_generator(seed: int, split: str, index: int) -> np.random.Generator:
    # One generator per scene: scene i does not depend on how many scenes come before or after it.
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _draw_objects(rng: np.random.Generator, config: SceneConfig, novel_first: bool) -> list:
    held_out = set(config.held_out_pairs)
    allowed = [(s, c) for s in config.shapes for c in config.colours if (s, c) not in held_out]
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=count, replace=False)
    objects = []
    for i, cell in enumerate(cells):
        # Only the object the caption describes first may carry a held-out pair, and only in a novel-pair scene.
        pool = list(config.held_out_pairs) if i == 0 and novel_first else allowed
        shape, colour = pool[int(rng.integers(len(pool)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append({"shape": shape, "colour": colour, "size": size, "position": POSITIONS[int(cell)]})
    return objects


def _describe(rng: np.random.Generator, objects: list, templates: Sequence[CaptionTemplate], described_first: int):
    """Choose a template that fits, the objects it describes (``described_first`` first), and write the caption."""
    fitting = [t for t in templates if t.min_objects <= len(objects) and len(t.mentions) <= len(objects)]
    template = fitting[int(rng.integers(len(fitting)))]
    others = [i for i in range(len(objects)) if i != described_first]
    others = [others[j] for j in rng.permutation(len(others))]
    described = [described_first, *others][: len(template.mentions)]
    values = {"count": _NUMBER_WORDS.get(len(objects), str(len(objects)))}
    constraints = []
    for slot, (index, mentioned) in enumerate(zip(described, template.mentions)):
        obj = objects[index]
        values.update({f"{name}{slot}": obj[name] for name in ("size", "colour", "shape")})
        values[f"where{slot}"] = _POSITION_PHRASES[obj["position"]]
        values[f"place{slot}"] = obj["position"]
        constraints.append({name: (obj[name] if name in mentioned else None) for name in OBJECT_ATTRIBUTES})
    caption = re.sub(r"\ba (?=[aeiou])", "an ", template.pattern.format(**values))
    spec = {"objects": constraints, "count": len(objects) if template.states_count else None}
    return caption, spec, template


def draw_scene(config: SceneConfig, split: str, index: int) -> dict:
    """Draw scene ``index`` of ``split``: its objects, its caption, and the caption's constraints (no pixels).

    Returns:
        `dict`: ``objects`` (list of ``{"shape", "colour", "size", "position"}``, sorted by grid cell),
        ``caption``, ``caption_attributes`` (``{"objects": [partial descriptions, None = any], "count": int or
        None}``), ``template``, ``novel_pair``, ``novel_template``, and ``rng`` (the scene's generator, positioned
        for rendering).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    rng = _split_generator(config.seed, split, index)
    is_test = split == "test"
    novel_first = is_test and bool(rng.random() < config.test_novel_pair_fraction)
    novel_template = is_test and bool(rng.random() < config.test_novel_template_fraction)
    objects = _draw_objects(rng, config, novel_first=novel_first)
    templates = [t for t in TEMPLATES if t.test_only == novel_template]
    caption, spec, template = _describe(rng, objects, templates, described_first=0)
    order = sorted(range(len(objects)), key=lambda i: POSITIONS.index(objects[i]["position"]))
    held_out = set(config.held_out_pairs)
    return {
        "objects": [objects[i] for i in order],
        "caption": caption,
        "caption_attributes": spec,
        "template": template.name,
        "novel_pair": any((o["shape"], o["colour"]) in held_out for o in spec["objects"]),
        "novel_template": template.test_only,
        "rng": rng,
    }


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 4  # shapes are drawn at 4× and averaged down: anti-aliased edges keep small shapes tellable apart


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-radius shape in coordinates ``u`` (right) and ``v`` (down) around its centre."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # apex up, base at v = 0.75
        return (v <= 0.75) & (np.abs(u) <= 0.95 * (v + 1.0) / 1.75)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "ring":
        radius2 = u * u + v * v
        return (radius2 <= 1.0) & (radius2 >= 0.5**2)
    raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")


def render_scene(objects: Sequence[Mapping], image_size: int, rng: np.random.Generator, noise_std: float = 6.0):
    """Render objects as an RGB ``uint8`` array of shape ``(image_size, image_size, 3)``.

    Each object sits in its grid cell, its centre jittered by up to 8 % of a cell, with radius 0.40 (large) or
    0.26 (small) of a cell, so objects never overlap. Colours are jittered by up to ±12 per channel; the background
    is a random dark grey with Gaussian pixel noise.

    Args:
        objects (`Sequence[Mapping]`): ``{"shape", "colour", "size", "position"}`` per object.
        image_size (`int`): side in pixels.
        rng (`np.random.Generator`): source of the jitter and noise (the scene's own generator).
        noise_std (`float`, *optional*, defaults to 6.0): background noise (0–255 scale).
    """
    hi = image_size * _SUPERSAMPLE
    cell = image_size / 3.0
    coords = (np.arange(hi, dtype=np.float64) + 0.5) / _SUPERSAMPLE  # pixel centres, in output pixels
    background = float(rng.uniform(30.0, 70.0))
    canvas = np.full((hi, hi, 3), background, dtype=np.float64)
    for obj in objects:
        row, col = divmod(POSITIONS.index(obj["position"]), 3)
        jitter = rng.uniform(-0.08, 0.08, size=2) * cell
        centre_x, centre_y = (col + 0.5) * cell + jitter[0], (row + 0.5) * cell + jitter[1]
        radius = (0.40 if obj["size"] == "large" else 0.26) * cell
        colour = np.clip(np.asarray(COLOURS[obj["colour"]], dtype=np.float64) + rng.integers(-12, 13, size=3), 0, 255)
        u = (coords[None, :] - centre_x) / radius
        v = (coords[:, None] - centre_y) / radius
        canvas[_shape_mask(obj["shape"], u, v)] = colour
    image = canvas.reshape(image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    image = image + rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # Fixed encoder settings: the same pixels always give the same bytes.
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------------------------


def scene_features():
    """The `datasets.Features` of a scenes split."""
    from datasets import Features, Image, Value

    obj = {name: Value("string") for name in OBJECT_ATTRIBUTES}
    return Features(
        {
            "image": Image(),
            "caption": Value("string"),
            "scene_id": Value("string"),
            "attributes": {"objects": [obj]},
            "caption_attributes": {"objects": [obj], "count": Value("int32")},
            "template": Value("string"),
            "novel_pair": Value("bool"),
            "novel_template": Value("bool"),
        }
    )


def _split_rows(config: SceneConfig, split: str, count: int) -> dict:
    columns = {name: [] for name in scene_features()}
    for index in range(count):
        scene = draw_scene(config, split, index)
        pixels = render_scene(scene["objects"], config.image_size, scene["rng"], config.noise_std)
        columns["image"].append({"bytes": _png_bytes(pixels), "path": None})
        columns["caption"].append(scene["caption"])
        columns["scene_id"].append(f"{split}-{config.seed}-{index:06d}")
        columns["attributes"].append({"objects": scene["objects"]})
        columns["caption_attributes"].append(scene["caption_attributes"])
        columns["template"].append(scene["template"])
        columns["novel_pair"].append(scene["novel_pair"])
        columns["novel_template"].append(scene["novel_template"])
    return columns


def generate_scenes(
    seed: int = 0,
    preset: str = "default",
    num_train: int | None = None,
    num_validation: int | None = None,
    num_test: int | None = None,
    image_size: int = 32,
    save_to: str | os.PathLike | None = None,
    **settings,
):
    """Generate the scenes data set (train / validation / test) deterministically from ``seed``.

    Args:
        seed (`int`, *optional*, defaults to 0): same seed → byte-identical images and identical captions.
        preset (`str`, *optional*, defaults to `"default"`): split sizes, ``"default"`` (6000 / 1000 / 1000, the CPU
            recipe) or ``"tiny"`` (48 / 16 / 16, for tests); see :data:`SCENE_PRESETS`.
        num_train, num_validation, num_test (`int`, *optional*): override the preset's sizes.
        image_size (`int`, *optional*, defaults to 32): image side in pixels.
        save_to (`str` or `os.PathLike`, *optional*): also write the set there (``save_to_disk`` layout plus
            ``scenes_config.json``), built in a staging folder and swapped in whole; read it back with
            :func:`load_scenes`.
        **settings: further :class:`SceneConfig` fields (``held_out_pairs``, ``max_objects``,
            ``test_novel_pair_fraction``, ...).

    Returns:
        `datasets.DatasetDict`: splits ``train``, ``validation``, ``test`` with columns ``image`` (`datasets.Image`),
        ``caption``, ``scene_id``, ``attributes`` (``{"objects": [...]}``: the image's objects),
        ``caption_attributes`` (the caption's constraints, see :func:`scene_relevance`), ``template``,
        ``novel_pair`` and ``novel_template``. The settings are in ``dataset.info.description`` as JSON.

    Example:

    ```python
    >>> from bt2_hf.experiments.scenes import generate_scenes, scene_relevance
    >>> scenes = generate_scenes(seed=0, preset="tiny")
    >>> test = scenes["test"]
    >>> relevant = scene_relevance(test["caption_attributes"], test["attributes"])  # (16, 16) bool
    ```
    """
    if preset not in SCENE_PRESETS:
        raise ValueError(f"Unknown scenes preset {preset!r}; use one of {sorted(SCENE_PRESETS)}.")
    sizes = SCENE_PRESETS[preset]
    config = SceneConfig(
        seed=seed,
        num_train=sizes[0] if num_train is None else num_train,
        num_validation=sizes[1] if num_validation is None else num_validation,
        num_test=sizes[2] if num_test is None else num_test,
        image_size=image_size,
        **settings,
    )
    return build_scenes(config, save_to=save_to)


def build_scenes(config: SceneConfig, save_to: str | os.PathLike | None = None):
    """Generate the data set of a :class:`SceneConfig` (what :func:`generate_scenes` does after building it)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    features = scene_features()
    description = json.dumps({"bt2_hf_scenes": config.to_dict()}, sort_keys=True)
    counts = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    scenes = DatasetDict(
        {
            split: Dataset.from_dict(
                _split_rows(config, split, count),
                features=features,
                info=DatasetInfo(description=description, features=features),
            )
            for split, count in counts.items()
        }
    )
    if save_to is not None:
        from ..utils.io import atomic_directory, atomic_write_json

        with atomic_directory(save_to) as staging:
            scenes.save_to_disk(str(staging))
            atomic_write_json(Path(staging) / SCENES_CONFIG_NAME, config.to_dict())
    return scenes


def scene_config_of(dataset) -> SceneConfig:
    """The :class:`SceneConfig` a scenes `Dataset` / `DatasetDict` was generated with (from its description)."""
    split = next(iter(dataset.values())) if hasattr(dataset, "values") else dataset
    try:
        settings = json.loads(split.info.description or "")["bt2_hf_scenes"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            "This dataset was not made by bt2_hf.experiments.scenes.generate_scenes (no settings)."
        ) from error
    return SceneConfig(**settings)


def load_scenes(path: str | os.PathLike):
    """Load a scenes data set written by :func:`generate_scenes` (``save_to=path``).

    Args:
        path (`str` or `os.PathLike`): the directory.

    Returns:
        `datasets.DatasetDict`: the three splits (memory-mapped), as :func:`generate_scenes` returned them.

    Raises:
        `BT2InputError`: the directory is missing, or is not a scenes data set (no ``scenes_config.json``, or
        missing splits or columns).
    """
    from datasets import load_from_disk

    from ..errors import BT2InputError

    path = Path(path)
    config_path = path / SCENES_CONFIG_NAME
    if not config_path.is_file():
        raise BT2InputError(
            f"no {SCENES_CONFIG_NAME}: this is not a scenes data set; write one with "
            "bt2_hf.experiments.scenes.generate_scenes(save_to=...).",
            path,
        )
    try:
        SceneConfig(**json.loads(config_path.read_text()))
    except (ValueError, TypeError) as error:
        raise BT2InputError(f"unreadable scene settings ({error}); regenerate the data set.", config_path) from error
    scenes = load_from_disk(str(path))
    missing_splits = [split for split in SPLITS if split not in scenes]
    if missing_splits:
        raise BT2InputError(f"missing splits {missing_splits}; regenerate the data set.", path)
    for split in SPLITS:
        missing = [name for name in scene_features() if name not in scenes[split].column_names]
        if missing:
            raise BT2InputError(f"split {split!r} lacks columns {missing}; regenerate the data set.", path)
    return scenes


# ---------------------------------------------------------------------------------------------------------------
# Relevance
# ---------------------------------------------------------------------------------------------------------------


def _objects_of(item, what: str, index: int) -> list:
    if isinstance(item, Mapping) and "objects" in item:
        objects = item["objects"]
    else:
        raise ValueError(f"{what} {index} must be a dict with an 'objects' list; got {type(item).__name__}.")
    if isinstance(objects, Mapping):  # a column read back from Arrow as a dict of lists
        keys = list(objects)
        objects = [dict(zip(keys, values)) for values in zip(*(objects[k] for k in keys))]
    for obj in objects:
        unknown = set(obj) - set(OBJECT_ATTRIBUTES)
        if unknown:
            raise ValueError(f"{what} {index} has unknown attributes {sorted(unknown)}; use {OBJECT_ATTRIBUTES}.")
    return list(objects)


def scene_relevance(caption_attributes: Sequence[Mapping], image_attributes: Sequence[Mapping]) -> np.ndarray:
    """The exact relevance matrix of captions (rows) against images (columns).

    Image ``j`` is relevant to caption ``i`` iff (a) the caption's object descriptions can be given to distinct
    objects of the image such that each object has every attribute its description states (``None`` or a missing
    key matches anything), and (b) the image has exactly ``count`` objects when the caption states a ``count``.
    Positions are exact grid cells (``"left"`` is the middle-left cell, not the left column).

    Args:
        caption_attributes (`Sequence[Mapping]`): per caption ``{"objects": [{"shape": "circle", "colour": None,
            ...}, ...], "count": int or None}`` (the ``caption_attributes`` column).
        image_attributes (`Sequence[Mapping]`): per image ``{"objects": [{"shape", "colour", "size",
            "position"}, ...]}`` (the ``attributes`` column).

    Returns:
        `np.ndarray` of `bool`, shape `(num_captions, num_images)`.
    """
    images = [_objects_of(item, "image", j) for j, item in enumerate(image_attributes)]
    slots = max((len(objects) for objects in images), default=0)
    # Integer codes per attribute (-1 = empty slot), so each caption is a few vectorised comparisons.
    vocab = {name: {} for name in OBJECT_ATTRIBUTES}
    codes = np.full((len(images), max(slots, 1), len(OBJECT_ATTRIBUTES)), -1, dtype=np.int32)
    for j, objects in enumerate(images):
        for k, obj in enumerate(objects):
            for a, name in enumerate(OBJECT_ATTRIBUTES):
                codes[j, k, a] = vocab[name].setdefault(obj.get(name), len(vocab[name]))
    occupied = np.zeros((len(images), max(slots, 1)), dtype=bool)
    for j, objects in enumerate(images):
        occupied[j, : len(objects)] = True
    counts = occupied.sum(axis=1)

    relevance = np.zeros((len(caption_attributes), len(images)), dtype=bool)
    cache: dict = {}
    for i, spec in enumerate(caption_attributes):
        constraints = _objects_of(spec, "caption", i)
        count = spec.get("count")
        key = (tuple(tuple(sorted((k, v) for k, v in c.items() if v is not None)) for c in constraints), count)
        if key not in cache:
            cache[key] = _match(key, vocab, codes, occupied, counts)
        relevance[i] = cache[key]
    return relevance


def _match(key, vocab, codes, occupied, counts) -> np.ndarray:
    constraints, count = key
    num_images, slots = occupied.shape
    result = np.ones(num_images, dtype=bool) if count is None else counts == int(count)
    if len(constraints) > slots:
        return np.zeros(num_images, dtype=bool)
    per_constraint = []
    for constraint in constraints:
        fits = occupied.copy()
        for name, value in constraint:
            code = vocab[name].get(value)
            if code is None:  # no image has this value at all
                fits[:] = False
                break
            fits &= codes[:, :, OBJECT_ATTRIBUTES.index(name)] == code
        per_constraint.append(fits)
    if not per_constraint:
        return result
    # Distinct objects for distinct descriptions: try every injective assignment (at most 9·8·7, usually 3·2·1).
    found = np.zeros(num_images, dtype=bool)
    for assignment in itertools.permutations(range(slots), len(per_constraint)):
        ok = np.ones(num_images, dtype=bool)
        for fits, slot in zip(per_constraint, assignment):
            ok &= fits[:, slot]
        found |= ok
    return result & found
