r"""Text towers whose embeddings search image galleries: ``independent_text``, ``bct_text`` and ``bt2_text``.

A text tower trains on image–text rows (an image, its caption, optionally a class label). The modality change of BT²
(Zhou et al., ICCV 2023, §4.1): a gallery was embedded by an old *image* model φ_old, and captions must search it.
A caption has no old embedding of its own (φ_old embeds only images), so its target in the old space is what φ_old
says about the image it describes: ``φ_old(x)`` of the paired image (computed online by the frozen old model on the
same augmented batch, or precomputed and read from a column). Where the data has class labels, the old model's class
prototypes ``W_o`` (class means of ``φ_old`` over the training images, as BT²/BCT) add the influence term.

Every text method adds an in-batch contrastive term (:func:`~bt2_hf.losses.contrastive_loss`, weight
``contrastive_weight``, temperature ``contrastive_temperature``): the cosine match pulls a caption towards its own
image's target, the contrastive term also pushes it away from the batch's other images, which is what instance-level
search (a caption finds *its* image, not just an image of its class) needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import classification_loss, contrastive_loss, cosine_matching_loss, influence_loss
from . import register_method
from .base import CompatibilityMethod, MethodConfig, PrototypeInfluenceConfig
from .bct import BCTMethod
from .bt2 import BT2Method, BT2MethodConfig


@dataclass
class ContrastiveConfig(MethodConfig):
    """The in-batch contrastive term shared by the image–text methods.

    Args:
        contrastive_weight (`float`, *optional*, defaults to 1.0): weight of the in-batch InfoNCE term (0 disables).
        contrastive_temperature (`float`, *optional*, defaults to 0.05): its temperature (cosines are divided by it).
    """

    contrastive_weight: float = field(
        default=1.0, metadata={"help": "Weight of the in-batch contrastive (InfoNCE) term (0 disables it)."}
    )
    contrastive_temperature: float = field(
        default=0.05, metadata={"help": "Temperature of the contrastive term (the cosines are divided by it)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be positive, got {self.contrastive_temperature}.")

    def contrastive(self, queries, keys) -> dict:
        """``{"contrastive_loss": weight · InfoNCE(queries, keys)}``, or nothing when the weight is 0."""
        if self.contrastive_weight == 0:
            return {}
        return {
            "contrastive_loss": self.contrastive_weight
            * contrastive_loss(queries, keys, temperature=self.contrastive_temperature)
        }


def _label_terms(method: CompatibilityMethod, logits, compatible, labels, influence_weight: float, scale: float):
    """Classifier and influence terms, only for labelled data (``labels`` given) and when they exist."""
    if labels is None:
        return {}
    terms = {}
    if logits is not None:
        terms["classification_loss"] = classification_loss(logits, labels, method.config.label_smoothing)
    if method.prototypes is not None and influence_weight:
        terms["influence_loss"] = influence_weight * influence_loss(compatible, method.prototypes, labels, scale=scale)
    return terms


def _no_ancestors(config) -> None:
    if getattr(config, "ancestor_prefix_dims", None):
        raise ValueError("ancestor_prefix_dims is supported for image towers only; leave it empty for text towers.")


@dataclass
class IndependentTextConfig(ContrastiveConfig):
    """Configuration of ``independent_text``: a text tower aligned with one frozen image model (LiT-style).

    ``L = match_weight · (1 − cos(ê, φ_img(x))) + contrastive_weight · InfoNCE(ê, φ_img(x))``
    ``  [+ CE(W e, y) + align_weight · CE(ê · P_imgᵀ, y)  with labels]``

    Args:
        match_weight (`float`, *optional*, defaults to 5.0): cosine match of the embedding to the paired image's.
        align_weight (`float`, *optional*, defaults to 10.0): with labels: cross-entropy through the image model's
            class prototypes ``P_img`` (logits in [-1, 1], hence the large weight, as BCT's influence loss).
        contrastive_weight, contrastive_temperature: the in-batch contrastive term against the paired images.
        label_smoothing (`float`, *optional*, defaults to 0.1): of the tower's own classifier (with labels).
    """

    match_weight: float = field(default=5.0, metadata={"help": "Weight of 1 − cos(ê, φ_img(x))."})
    align_weight: float = field(default=10.0, metadata={"help": "With labels: weight of CE(ê · P_imgᵀ, y)."})


@register_method
class IndependentTextMethod(CompatibilityMethod):
    """The independently trained text tower φ'_text: aligned with a *new* image model (the frozen ``image_model``),
    never tied to the old one. It is the text side's "new'" model, the target of ``bt2_text``'s new-match term.
    Its linear head has the image model's width (the two embeddings are compared directly)."""

    name = "independent_text"
    config_class = IndependentTextConfig
    modality = "text"
    requires = ("image",)
    uses_prototypes = True
    prototype_reference = "image"
    requires_labels = False
    paper = {}

    def build_config_overrides(self, reference_dims, embedding_dim):
        image_dim = reference_dims["image"]
        if embedding_dim is not None and embedding_dim != image_dim:
            raise ValueError(
                f"independent_text compares its embedding with the image model's {image_dim}-d one; got "
                f"embedding_dim={embedding_dim}. Leave embedding_dim unset."
            )
        return {"head_type": "linear", "embedding_dim": image_dim}

    def compute_loss(self, outputs, targets, labels):
        config, embeddings, image = self.config, outputs.embeddings, targets["image"]
        return {
            "match_loss": config.match_weight * cosine_matching_loss(embeddings, image),
            **config.contrastive(embeddings, image),
            **_label_terms(self, outputs.logits, embeddings, labels, config.align_weight, 1.0),
        }


@dataclass
class BCTTextConfig(PrototypeInfluenceConfig, ContrastiveConfig):
    """Configuration of ``bct_text``: a text tower whose whole embedding lives in the old image space (no extra dims).

    ``L = old_match_weight · (1 − cos(b̂, φ_old(x))) + contrastive_weight · InfoNCE(b̂, φ_old(x))``
    ``  [+ CE(W φ, y) + influence_weight · CE(φ[:d_old] · W_oᵀ, y)  with labels]``

    Args:
        old_match_weight (`float`, *optional*, defaults to 5.0): cosine match of the compatible block ``b̂`` to the
            old image model's embedding of the paired image.
        influence_weight, influence_scale: with labels: BCT's influence loss through the old prototypes ``W_o``.
        contrastive_weight, contrastive_temperature: the in-batch contrastive term of ``b̂`` against the paired
            images' old embeddings.
        label_smoothing (`float`, *optional*, defaults to 0.1): of both cross-entropies.
    """

    old_match_weight: float = field(default=5.0, metadata={"help": "Weight of 1 − cos(b̂, φ_old(x))."})


@register_method
class BCTTextMethod(CompatibilityMethod):
    """BCT for a text tower: the embedding (at least ``d_old`` wide, default exactly) is tied to the old image space;
    nothing is added for what the text tower knows beyond it (the baseline BT² is compared with)."""

    name = "bct_text"
    config_class = BCTTextConfig
    modality = "text"
    requires = ("old",)
    uses_prototypes = True
    requires_labels = False
    paper = BCTMethod.paper
    build_config_overrides = BCTMethod.build_config_overrides

    def compute_loss(self, outputs, targets, labels):
        config, old = self.config, targets["old"]
        compatible = outputs.compatible_embeddings
        return {
            "old_match_loss": config.old_match_weight * cosine_matching_loss(compatible, old),
            **config.contrastive(compatible, old),
            # the un-renormalised prefix through W_o, as BCT
            **_label_terms(self, outputs.logits, outputs.embeddings, labels, config.influence_weight,
                           config.influence_scale),
        }  # fmt: skip


@dataclass
class BT2TextConfig(BT2MethodConfig, ContrastiveConfig):
    """Configuration of ``bt2_text`` (BT²'s λ1 = ``new_match_weight``, λ2 = ``influence_weight``, λ3 =
    ``old_match_weight``).

    ``L = λ3 · (1 − cos(b̂, φ_old(x))) + λ1 · (1 − cos(f̂, φ'_text(t))) + contrastive_weight · InfoNCE(b̂, φ_old(x))``
    ``  [+ CE(W f, y) + λ2 · CE(b̂ · W_oᵀ, y)  with labels]``

    Args:
        old_match_weight (`float`, *optional*, defaults to 5.0): λ3, match of the compatible block to the old image
            target of the caption (its paired image's old embedding).
        new_match_weight (`float`, *optional*, defaults to 1.0): λ1, match of the feature ``f`` to the independent
            text tower's embedding of the same caption (so the tower keeps what φ'_text knows).
        influence_weight, influence_scale: with labels: λ2, influence of ``b̂`` through the old prototypes.
        contrastive_weight, contrastive_temperature: the in-batch contrastive term of ``b̂`` against the paired
            images' old embeddings.
        extra_dim, feature_scale: the BT² head's ``k`` and ``C``.
        label_smoothing (`float`, *optional*, defaults to 0.0): of the classifier on ``f``.
    """


@register_method
class BT2TextMethod(CompatibilityMethod):
    r"""BT² for a text tower: the first ``d_old`` dims of the caption embedding live in the old *image* space, the
    feature ``f`` (recoverable from the embedding) matches the independent text tower.

    Each BT² term carries over to captions: the influence term uses the same ``W_o`` (class means of the old image
    embeddings: it needs images and labels only); the old match targets the paired image's old embedding; the new
    match targets the independent text tower φ'_text of the same caption. The contrastive term adds instance-level
    discrimination in the old space.
    """

    name = "bt2_text"
    config_class = BT2TextConfig
    modality = "text"
    requires = ("old", "independent")
    uses_prototypes = True
    requires_labels = False
    paper = BT2Method.paper
    build_config_overrides = BT2Method.build_config_overrides

    def __init__(self, config=None):
        super().__init__(config)
        _no_ancestors(self.config)

    def compute_loss(self, outputs, targets, labels):
        config, old = self.config, targets["old"]
        compatible = outputs.compatible_embeddings  # b̂: (B, d_old)
        return {
            "old_match_loss": config.old_match_weight * cosine_matching_loss(compatible, old),
            "new_match_loss": config.new_match_weight * cosine_matching_loss(outputs.features, targets["independent"]),
            **config.contrastive(compatible, old),
            **_label_terms(self, outputs.logits, compatible, labels, config.influence_weight, config.influence_scale),
        }
