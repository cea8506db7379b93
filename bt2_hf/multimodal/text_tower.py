r"""A BT² text tower: captions embedded so that their first ``d_old`` dimensions live in an OLD image model's space.

The modality-change setting of BT² (Zhou et al., ICCV 2023, §4.1 "modality change"): a retrieval system holds a
gallery of images embedded by an old image model φ_old (``d_old`` dims). A text encoder arrives (MiniLM, CLIP text,
an open_clip text tower). We want text queries to search the old gallery with no backfill, while the text tower
keeps everything an independently trained text model would know. The BT² head does this exactly as for images
(:class:`~bt2_hf.heads.BasisTransformationHead`): ``embedding = [b ; e]`` with ``b`` (the first ``d_old`` dims)
matched to the old image space and ``e`` the extra dims, and the head's feature ``f`` recoverable losslessly.

What changes with the modality is where the targets come from: a caption has no "old embedding" of its own, because
φ_old only embeds images. The targets are built from the frozen old image model over the images the captions
describe:

- class-level captions (classification sets): the class prototype ``W_o[y]`` (mean old embedding of the class's
  training images: the same fixed pseudo-classifier as BT²/BCT, bt2-method §1.4);
- paired captions (COCO-style): the paired image's old embedding ``φ_old(x_image)``.

See :class:`BT2TextTowerLoss` for the derivation of each term and :class:`AlignedTextTowerLoss` for the
independently trained text tower (the "new'" model of the text side).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..losses import classification_loss, cosine_matching_loss, influence_loss
from ..methods.base import MethodConfig
from ..modeling_bt2 import BT2Model

logger = logging.getLogger(__name__)

TEXT_TO_IMAGE_METRICS = ("recall@1", "recall@5", "recall@10", "map")


# ------------------------------------------------------------------------------------------------------------ losses


@dataclass
class AlignedTextTowerConfig(MethodConfig):
    """Configuration of :class:`AlignedTextTowerLoss` (the independently trained text tower).

    Args:
        align_weight (`float`, *optional*, defaults to 10.0): weight of the cross-entropy through the image
            prototypes (logits in [-1, 1], hence a large weight, as BCT's influence loss).
        match_weight (`float`, *optional*, defaults to 5.0): weight of the cosine match to the class prototype.
        label_smoothing (`float`, *optional*, defaults to 0.1): of the text tower's own classifier.
    """

    align_weight: float = field(default=10.0, metadata={"help": "Weight of CE(ê · P_imgᵀ, y)."})
    match_weight: float = field(default=5.0, metadata={"help": "Weight of 1 − cos(ê, P_img[y])."})


class AlignedTextTowerLoss:
    r"""Loss of an independently trained text tower aligned with one image model (a class-level "CLIP").

    ``L = CE(W e, y) + align_weight · CE(ê · P_imgᵀ, y) + match_weight · (1 − cos(ê, P_img[y]))``

    where ``e`` is the tower's (linear-head) embedding and ``P_img`` the class prototypes of the image model whose
    gallery this tower should search. Trained against the *new* image model it is the text side's independent model
    φ'_text: good against the new gallery, and at chance against the old one (its space was never tied to φ_old).
    It is the reference the BT² text tower's feature ``f`` is matched to.

    Args:
        prototypes (`torch.Tensor` of shape `(num_classes, d_img)`): the image model's class means.
        config (:class:`AlignedTextTowerConfig`, *optional*): the weights.
    """

    name = "aligned_text"

    def __init__(self, prototypes: torch.Tensor, config: AlignedTextTowerConfig | None = None):
        self.config = config or AlignedTextTowerConfig()
        self.prototypes = prototypes.float()

    def __call__(
        self, outputs: Any, labels: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        config, prototypes = self.config, self.prototypes.to(labels.device)
        embeddings = outputs.embeddings
        return {
            "classification_loss": classification_loss(outputs.logits, labels, config.label_smoothing),
            "align_loss": config.align_weight * influence_loss(embeddings, prototypes, labels),
            "match_loss": config.match_weight * cosine_matching_loss(embeddings, prototypes[labels]),
        }

    def metadata(self) -> dict[str, Any]:
        return {"method": self.name, "method_config": self.config.to_dict()}


@dataclass
class BT2TextTowerConfig(MethodConfig):
    """Configuration of :class:`BT2TextTowerLoss` (defaults: BT²'s λ1 = 1, λ2 = 10, λ3 = 5).

    Args:
        influence_weight (`float`, *optional*, defaults to 10.0): λ2, influence of ``b̂`` through the old prototypes.
        old_match_weight (`float`, *optional*, defaults to 5.0): λ3, cosine match of ``b̂`` to the old image target.
        new_match_weight (`float`, *optional*, defaults to 1.0): λ1, cosine match of ``f̂`` to the independent text
            tower.
        label_smoothing (`float`, *optional*, defaults to 0.0): of the classifier on ``f`` (BT²'s trainer uses none).
    """

    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of CE(W f, y)."})
    influence_weight: float = field(default=10.0, metadata={"help": "λ2: weight of CE(b̂ · W_oᵀ, y)."})
    old_match_weight: float = field(default=5.0, metadata={"help": "λ3: weight of 1 − cos(b̂, old image target)."})
    new_match_weight: float = field(default=1.0, metadata={"help": "λ1: weight of 1 − cos(f̂, φ'_text(t))."})


class BT2TextTowerLoss:
    r"""The BT² loss of a text tower whose compatible block lives in an old *image* model's space.

    For a caption ``t`` of class ``y`` the BT² head gives ``b`` (the first ``d_old`` dims), ``f`` (the feature, which
    the classifier sees) and ``e`` (extra dims). The paper's loss (bt2-method §1.4) has three parts besides the
    classifier, and each carries over to captions as follows:

    1. **Influence through the prototype classifier**, ``λ2 · CE(b̂ · W_oᵀ, y)``. In BT²/BCT, ``W_o`` is the old
       model's class means over the new training set; it only needs images and labels, so it is *the same* fixed
       pseudo-classifier here: ``W_o[c] = mean φ_old(x)`` over the training images of class ``c``. The term makes a
       caption's block ``b`` classify as its class *under the old image model's geometry*: a text query of class ``y``
       lands nearer the old gallery images of ``y`` than those of any other class.
    2. **Matching to the old space**, ``λ3 · (1 − cos(b̂, τ_old(t)))``. BT² matches ``b̂`` to ``φ_old(x)`` of the same
       image. A caption has no old embedding, so ``τ_old`` is what the old model says about the images the caption
       describes: for a paired caption, its image's ``φ_old``; for a class-level caption (which describes every image
       of the class equally), the expectation of ``φ_old`` over the class, i.e. ``W_o[y]``. The cosine ignores
       ``W_o[y]``'s norm, so it pulls ``b`` to the class centroid direction, where old→old retrieval would put an
       average image of the class.
    3. **Matching to the independently trained model**, ``λ1 · (1 − cos(f̂, φ'_text(t)))``. φ'_text is the text tower
       trained alone (:class:`AlignedTextTowerLoss`, aligned with a *new* image model). Matching ``f`` to it keeps
       all of φ'_text's information in the BT² embedding (``f`` is recoverable from it exactly: ``recover_features``),
       so the text tower pays no compatibility tax and can search a new-model gallery through ``f``.

    Plus the classifier on ``f``, ``CE(W f, y)``, as BT². Total:

    ``L = CE(W f, y) + λ2 · CE(b̂ · W_oᵀ, y) + λ3 · (1 − cos(b̂, τ_old)) + λ1 · (1 − cos(f̂, φ'_text(t)))``

    Args:
        prototypes (`torch.Tensor` of shape `(num_classes, d_old)`): ``W_o``, the old image model's class means.
        config (:class:`BT2TextTowerConfig`, *optional*): the weights.

    Targets given per batch (``targets`` of :meth:`__call__`): ``"independent"`` (``(B, D)``, φ'_text of the
    captions; required unless ``new_match_weight`` is 0) and optionally ``"old"`` (``(B, d_old)``, paired images'
    old embeddings; defaults to ``W_o[y]``).
    """

    name = "bt2_text"

    def __init__(self, prototypes: torch.Tensor, config: BT2TextTowerConfig | None = None):
        self.config = config or BT2TextTowerConfig()
        self.prototypes = prototypes.float()

    def __call__(
        self, outputs: Any, labels: torch.Tensor, targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        config, prototypes = self.config, self.prototypes.to(labels.device)
        compatible = outputs.compatible_embeddings  # b̂: (B, d_old)
        if compatible.shape[1] != prototypes.shape[1]:
            raise ValueError(
                f"The text tower's compatible block has {compatible.shape[1]} dims but the old image model's "
                f"prototypes have {prototypes.shape[1]}: build the BT² head with old_embedding_dim={prototypes.shape[1]}."
            )
        old_targets = targets.get("old")
        if old_targets is None:
            old_targets = prototypes[labels]  # class-level captions: E[φ_old(x) | y]
        losses = {
            "classification_loss": classification_loss(outputs.logits, labels, config.label_smoothing),
            "influence_loss": config.influence_weight * influence_loss(compatible, prototypes, labels),
            "old_match_loss": config.old_match_weight * cosine_matching_loss(compatible, old_targets),
        }
        if config.new_match_weight > 0:
            if "independent" not in targets:
                raise ValueError(
                    "BT2TextTowerLoss needs the independent text tower's embeddings (targets['independent'])."
                )
            losses["new_match_loss"] = config.new_match_weight * cosine_matching_loss(
                outputs.features, targets["independent"]
            )
        return losses

    def metadata(self) -> dict[str, Any]:
        return {"method": self.name, "method_config": self.config.to_dict()}


# ------------------------------------------------------------------------------------------------------- embeddings


@torch.no_grad()
def embed_images(
    model: BT2Model, images: torch.Tensor, batch_size: int = 512, show_progress: bool = False
) -> torch.Tensor:
    """Embed a uint8 image tensor ``(N, C, H, W)`` with an image model's own preprocessing (no augmentation).

    Returns:
        `torch.FloatTensor` of shape `(N, embedding_dim)` on the CPU, unit-norm rows.
    """
    from ..data.transforms import ModelInputTransform

    transform = ModelInputTransform.from_processor(model.processor)
    device = model.device
    was_training = model.training
    model.eval()
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="embed images", disable=not show_progress):
        pixel_values = transform(images[start : start + batch_size].to(device))
        chunks.append(model(pixel_values=pixel_values).embeddings.float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.embedding_dim)


@torch.no_grad()
def image_prototypes(model: BT2Model, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means of an image model's embeddings (not re-normalised): BT²'s fixed pseudo-classifier ``W_o``.

    Args:
        model (:class:`~bt2_hf.BT2Model`): the frozen image model.
        images (`torch.ByteTensor` of shape `(N, C, H, W)`): its training images.
        labels (`torch.LongTensor` of shape `(N,)`): their classes; every class in ``range(num_classes)`` needs one.
        num_classes (`int`): number of classes.

    Returns:
        `torch.FloatTensor` of shape `(num_classes, embedding_dim)`.
    """
    from ..training.prototypes import compute_class_means

    embeddings = embed_images(model, images)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return compute_class_means([(embeddings, labels)], num_classes, lambda x: x, embeddings.shape[1])


def _tokenize(model: BT2Model, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    if model.processor is None:
        raise ValueError("The text tower has no tokenizer (model.processor); build it with from_pretrained_backbone.")
    try:
        encoded = model.processor(
            list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
    except TypeError:  # open_clip tokenizers pad to a fixed context length and take no such options
        encoded = model.processor(list(texts), return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def embed_texts(
    model: BT2Model,
    texts: Sequence[str],
    batch_size: int = 256,
    output: str = "embeddings",
    max_length: int = 64,
) -> torch.Tensor:
    """Embed captions with a text tower.

    Args:
        model (:class:`~bt2_hf.BT2Model`): a text model.
        texts (`Sequence[str]`): captions.
        batch_size (`int`, *optional*, defaults to 256): captions per forward pass.
        output (`str`, *optional*, defaults to `"embeddings"`): ``"embeddings"`` (the full embedding: its prefix
            searches the old gallery), ``"compatible_embeddings"`` or ``"features"`` (BT²'s ``f``, in the independent
            text tower's space: searches the new-model gallery).
        max_length (`int`, *optional*, defaults to 64): tokens per caption.

    Returns:
        `torch.FloatTensor` of shape `(len(texts), width)` on the CPU.
    """
    if output not in ("embeddings", "compatible_embeddings", "features"):
        raise ValueError(f"output must be embeddings, compatible_embeddings or features, got {output!r}.")
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        inputs = _tokenize(model, texts[start : start + batch_size], max_length)
        outputs = model(**{k: v.to(model.device) for k, v in inputs.items()})
        chunks.append(getattr(outputs, output).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------------------- training


@dataclass
class TextTowerTrainingArguments:
    """How to train a text tower (a compact single-process loop: captions are few and short).

    Args:
        max_steps (`int`, *optional*, defaults to 300): optimizer steps.
        batch_size (`int`, *optional*, defaults to 32): captions per step.
        learning_rate (`float`, *optional*, defaults to 5e-5): of the pretrained text backbone.
        head_learning_rate (`float`, *optional*, defaults to 1e-3): of the head (fresh weights learn faster).
        weight_decay (`float`, *optional*, defaults to 0.01): AdamW's decoupled weight decay.
        warmup_steps (`int`, *optional*, defaults to 20): linear warm-up, then cosine decay.
        max_length (`int`, *optional*, defaults to 64): tokens per caption.
        seed (`int`, *optional*, defaults to 0): batch order and initialisation.
        logging_steps (`int`, *optional*, defaults to 50): log the mean losses every N steps.
        disable_tqdm (`bool`, *optional*, defaults to `False`): no progress bar.
        freeze_backbone (`bool`, *optional*, defaults to `False`): train the head only. The backbone's pooled
            features of every caption are then computed once, so a step costs a head forward (CPU-friendly:
            fine-tuning MiniLM costs ~70 GFLOP per 32-caption step).
    """

    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_length: int = 64
    seed: int = 0
    logging_steps: int = 50
    disable_tqdm: bool = False
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")


def build_text_tower(
    text_model_path: str,
    *,
    head_type: str = "linear",
    num_classes: int,
    embedding_dim: int | None = None,
    feature_dim: int | None = None,
    old_embedding_dim: int | None = None,
    extra_dim: int = 16,
    feature_scale: float = 2.0,
    backbone_type: str = "hf_text",
    pooling: str = "default",
    head_nonlinearity: str = "none",
    seed: int = 0,
) -> BT2Model:
    """A text tower from a local pretrained checkpoint with a fresh head (linear, or BT² against an old image model).

    Args:
        text_model_path (`str`): a transformers text checkpoint directory (MiniLM, BERT, CLIP text) or an open_clip
            weights file (with ``backbone_type="open_clip_text"``).
        head_type (`str`, *optional*, defaults to `"linear"`): ``"linear"`` (independent tower) or
            ``"basis_transformation"`` (BT² tower).
        num_classes (`int`): classes of the classifier on the feature.
        embedding_dim (`int`, *optional*): width of a linear head.
        feature_dim (`int`, *optional*): BT²: ``D``, the independent text tower's width.
        old_embedding_dim (`int`, *optional*): BT²: ``d_old``, the old *image* model's width.
        extra_dim (`int`, *optional*, defaults to 16): BT²: ``k``; ``extra_dim + feature_dim > old_embedding_dim``.
        feature_scale (`float`, *optional*, defaults to 2.0): BT²: ``C``.
        backbone_type (`str`, *optional*, defaults to `"hf_text"`): ``hf_text`` or ``open_clip_text``.
        pooling (`str`, *optional*, defaults to `"default"`): mean pooling for BERT-family models.
        head_nonlinearity (`str`, *optional*, defaults to `"none"`): for both towers alike (see the comment below).
        seed (`int`, *optional*, defaults to 0): seed of the head's initialisation.
    """
    torch.manual_seed(seed)
    if head_type == "basis_transformation":
        if feature_dim is None or old_embedding_dim is None:
            raise ValueError("A BT² text tower needs feature_dim (independent tower width) and old_embedding_dim.")
        head = dict(
            head_type=head_type,
            feature_dim=feature_dim,
            old_embedding_dim=old_embedding_dim,
            extra_dim=extra_dim,
            feature_scale=feature_scale,
        )
    else:
        head = dict(head_type="linear", embedding_dim=embedding_dim or 64)
    # Both towers use the same nonlinearity: f (post-ReLU would be non-negative) must be able to match the
    # independent tower's signed embedding, or the new-match term can never reach zero.
    head["head_nonlinearity"] = head_nonlinearity
    return BT2Model.from_pretrained_backbone(
        text_model_path, backbone_type, pooling=pooling, num_classes=num_classes, **head
    )


def train_text_tower(
    model: BT2Model,
    captions: Sequence[str],
    labels: Sequence[int],
    loss_fn: AlignedTextTowerLoss | BT2TextTowerLoss,
    args: TextTowerTrainingArguments | None = None,
    targets: dict[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> list[dict[str, float]]:
    """Train a text tower on (caption, class) pairs with a text-tower loss; returns the logged history.

    A plain torch loop rather than the accelerate trainer: the inputs are a few hundred short captions tokenised
    once, and the per-caption targets (``targets``, e.g. the independent tower's embeddings) are precomputed, so no
    frozen model runs during training.

    Args:
        model (:class:`~bt2_hf.BT2Model`): the text tower (see :func:`build_text_tower`); trained in place.
        captions (`Sequence[str]`): training captions.
        labels (`Sequence[int]`): their class ids.
        loss_fn (:class:`AlignedTextTowerLoss` or :class:`BT2TextTowerLoss`): the loss.
        args (:class:`TextTowerTrainingArguments`, *optional*): optimisation settings.
        targets (`dict[str, torch.Tensor]`, *optional*): per-caption targets, each `(len(captions), dim)`.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available.

    >>> history = train_text_tower(model, captions, labels, BT2TextTowerLoss(W_o), targets={"independent": t})  # doctest: +SKIP
    """
    from ..training.trainer import build_lr_scheduler

    args = args or TextTowerTrainingArguments()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    labels_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    if len(captions) != len(labels_tensor):
        raise ValueError(f"{len(captions)} captions but {len(labels_tensor)} labels.")
    targets = {name: value.float() for name, value in (targets or {}).items()}
    for name, value in targets.items():
        if len(value) != len(captions):
            raise ValueError(f"targets[{name!r}] has {len(value)} rows for {len(captions)} captions.")
    model.to(device).train()
    inputs = _tokenize(model, captions, args.max_length)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    backbone_params = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    groups = [{"params": head_params, "lr": args.head_learning_rate}]
    pooled_cache = None
    if args.freeze_backbone:
        model.backbone.requires_grad_(False).eval()
        with torch.no_grad():  # (n_captions, hidden): the frozen backbone's output never changes
            pooled_cache = torch.cat(
                [
                    model.backbone(**{k: v[start : start + 256].to(device) for k, v in inputs.items()})
                    for start in range(0, len(captions), 256)
                ]
            )
    else:
        groups.append({"params": backbone_params, "lr": args.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    scheduler = build_lr_scheduler(optimizer, "cosine", args.warmup_steps, args.max_steps)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(captions), generator=generator)
    cursor = 0
    history: list[dict[str, float]] = []
    window: dict[str, float] = {}
    window_steps, start = 0, time.perf_counter()
    for step in tqdm(range(1, args.max_steps + 1), desc=f"train {loss_fn.name}", disable=args.disable_tqdm):
        if cursor + args.batch_size > len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(captions), generator=generator), 0
        rows = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        batch_labels = labels_tensor[rows].to(device)
        if pooled_cache is not None:
            outputs = model.head(pooled_cache[rows])  # HeadOutput: the same fields as BT2Output
        else:
            batch = {k: v[rows].to(device) for k, v in inputs.items()}
            # Drop all-padding columns: captions are short, the tokenised table is padded to the longest one.
            length = int(batch["attention_mask"].sum(dim=1).max()) if "attention_mask" in batch else None
            if length:
                batch = {k: v[:, :length] for k, v in batch.items()}
            outputs = model(**batch)
        losses = loss_fn(outputs, batch_labels, {k: v[rows].to(device) for k, v in targets.items()})
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for key, value in {**losses, "loss": loss}.items():
            window[key] = window.get(key, 0.0) + float(value.detach())
        window_steps += 1
        if step % args.logging_steps == 0 or step == args.max_steps:
            entry = {"step": step, **{k: v / window_steps for k, v in window.items()}}
            entry["seconds"] = time.perf_counter() - start
            if not math.isfinite(entry["loss"]):
                raise FloatingPointError(f"The text tower's loss became {entry['loss']} at step {step}.")
            history.append(entry)
            logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "step"))
            window, window_steps = {}, 0
    model.requires_grad_(True).eval()
    model.config.training = {
        **loss_fn.metadata(),
        "freeze_backbone": args.freeze_backbone,
        "num_train_captions": len(captions),
        "steps": args.max_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "seed": args.seed,
        "bt2_hf_trainer": "text_tower",
    }
    return history


# ------------------------------------------------------------------------------------------------------- evaluation


def evaluate_text_to_image(
    text_embeddings,
    gallery_embeddings,
    query_labels=None,
    gallery_labels=None,
    *,
    query_relevant: Sequence[Sequence] | None = None,
    gallery_ids: Sequence | None = None,
    metrics: Sequence[str] = TEXT_TO_IMAGE_METRICS,
    backend: str = "faiss",
) -> dict[str, float]:
    """Recall@K and mAP of text queries against an image gallery (any widths: the prefix rule aligns them).

    Relevance is either class-level (``query_labels`` / ``gallery_labels``: a class-level caption is relevant to
    every image of its class) or explicit (``query_relevant``: each caption's own image ids, with ``gallery_ids``).

    Args:
        text_embeddings (`array-like` of shape `(n, d_q)`): the captions' embeddings (the full BT² embedding: its
            first ``d_gallery`` dims are compared with an old gallery after re-normalisation).
        gallery_embeddings (`array-like` of shape `(N, d_g)`): the image gallery.
        query_labels, gallery_labels (`array-like`, *optional*): class labels.
        query_relevant (`Sequence[Sequence]`, *optional*): relevant gallery ids per query.
        gallery_ids (`Sequence`, *optional*): ids of the gallery rows.
        metrics (`Sequence[str]`, *optional*): defaults to Recall@1/5/10 and mAP.
        backend (`str`, *optional*, defaults to `"faiss"`): k-NN backend.

    Returns:
        `dict[str, float]`: fractions in [0, 1].

    >>> import numpy as np
    >>> texts = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, -0.2]])  # 3-d text tower, 2-d old gallery
    >>> gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> evaluate_text_to_image(texts, gallery, [0, 1], [0, 0, 1], metrics=["recall@1"])
    {'recall@1': 1.0}
    """
    from ..retrieval import RetrievalEvaluator

    evaluator = RetrievalEvaluator(metrics=list(metrics), backend=backend)
    result = evaluator.evaluate(
        np.asarray(text_embeddings, dtype=np.float32),
        np.asarray(gallery_embeddings, dtype=np.float32),
        query_labels,
        gallery_labels,
        query_relevant=query_relevant,
        gallery_ids=gallery_ids,
        same_items=False,
    )
    return dict(result.metrics)


def chance_recall_at_1(query_labels: Sequence[int], gallery_labels: Sequence[int]) -> float:
    """Expected Recall@1 of a random ranking with class-level relevance: the mean relevant fraction of the gallery."""
    gallery = np.asarray(gallery_labels)
    return float(np.mean([np.mean(gallery == label) for label in query_labels]))
