r"""Image–text pairs: a new text tower and a new image tower trained together, CLIP-style (``clip``, ``bt2_pair``).

The trained model is a :class:`~bt2_hf.training.towers.BT2PairModel` (two :class:`~bt2_hf.BT2Model` towers, saved as
two checkpoints); ``outputs`` of :meth:`compute_loss` is its :class:`~bt2_hf.training.towers.BT2PairOutput`
(``outputs.image``, ``outputs.text``), and ``build_config_overrides`` returns the head of each tower
(``{"image": {...}, "text": {...}}``).

- ``clip``: the independent pair, no compatibility term: the in-batch contrastive loss between the two towers' full
  embeddings (+ each tower's classifier where the data has labels). It is the reference a BT² pair matches.
- ``bt2_pair``: both towers get a BT² head tied to the old image space (old prefix = ``d_old``): the same CLIP term on
  the full embeddings, plus, per tower, BT²'s terms: the compatible block ``b̂`` matched to the old model's embedding
  of the row's image, the feature ``f`` matched to the independent pair's tower of the same modality, and (with labels)
  the influence through ``W_o``. The text tower's ``b̂`` also gets an in-batch contrastive term against the old image
  embeddings (``old_contrastive_weight``): instance-level text → old-image search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import classification_loss, contrastive_loss, cosine_matching_loss, influence_loss
from . import register_method
from .base import CompatibilityMethod
from .bt2 import BT2Method, BT2MethodConfig
from .text import ContrastiveConfig

TOWERS = ("image", "text")


def _classification_terms(method: CompatibilityMethod, outputs, labels) -> dict:
    """Each tower's own classifier, with labels."""
    if labels is None:
        return {}
    return {
        f"{tower}_classification_loss": classification_loss(
            getattr(outputs, tower).logits, labels, method.config.label_smoothing
        )
        for tower in TOWERS
        if getattr(outputs, tower).logits is not None
    }


@dataclass
class CLIPPairConfig(ContrastiveConfig):
    """Configuration of ``clip`` (the independent pair).

    ``L = contrastive_weight · InfoNCE(ê_text, ê_image)  [+ CE(W_img e_img, y) + CE(W_txt e_txt, y)  with labels]``

    Args:
        contrastive_weight (`float`, *optional*, defaults to 1.0): weight of the symmetric in-batch contrastive term
            between the text and image embeddings of the batch's pairs.
        contrastive_temperature (`float`, *optional*, defaults to 0.05): its temperature (fixed; CLIP learns it).
        label_smoothing (`float`, *optional*, defaults to 0.1): of the towers' classifiers (with labels).
    """


@register_method
class CLIPPairMethod(CompatibilityMethod):
    """Two towers trained together with the CLIP loss: the independent image–text pair (no tie to the old model)."""

    name = "clip"
    config_class = CLIPPairConfig
    modality = "pair"
    requires = ()
    requires_labels = False
    paper = {
        "title": "Learning Transferable Visual Models From Natural Language Supervision",
        "arxiv_id": "2103.00020",
        "url": "https://arxiv.org/abs/2103.00020",
        "citation": (
            "@inproceedings{radford2021clip,\n"
            "  title={Learning Transferable Visual Models From Natural Language Supervision},\n"
            "  author={Radford, Alec and others},\n"
            "  booktitle={ICML},\n"
            "  year={2021}\n"
            "}"
        ),
    }

    def build_config_overrides(self, reference_dims, embedding_dim):
        # signed embeddings: a ReLU'd embedding could not align with the other tower's (nor be matched by BT²'s f)
        head = {"head_type": "linear", "embedding_dim": embedding_dim or 128, "head_nonlinearity": "none"}
        return {tower: dict(head) for tower in TOWERS}

    def compute_loss(self, outputs, targets, labels):
        return {
            **self.config.contrastive(outputs.text.embeddings, outputs.image.embeddings),
            **_classification_terms(self, outputs, labels),
        }


@dataclass
class BT2PairConfig(BT2MethodConfig, ContrastiveConfig):
    """Configuration of ``bt2_pair``: each tower's BT² terms plus the CLIP term (weights as ``bt2``).

    ``L = contrastive_weight · InfoNCE(ê_text, ê_image) + old_contrastive_weight · InfoNCE(b̂_text, φ_old(x))``
    ``  + image_old_contrastive_weight · InfoNCE(b̂_image, φ_old(x))``
    ``  + Σ_tower [ old_match_weight · (1 − cos(b̂, φ_old(x))) + new_match_weight · (1 − cos(f̂, φ'_tower)) ]``
    ``  [+ Σ_tower CE(W f, y) + influence_weight · CE(b̂ · W_oᵀ, y)  with labels]``

    Args:
        contrastive_weight, contrastive_temperature: the CLIP term between the two towers' full embeddings.
        old_contrastive_weight (`float`, *optional*, defaults to 1.0): in-batch contrastive term of the text tower's
            compatible block against the old image embeddings of the batch (text → old gallery, instance level).
        image_old_contrastive_weight (`float`, *optional*, defaults to 0.0): the same term for the image tower's
            compatible block (new image → old gallery); off by default.
        old_match_weight, new_match_weight, influence_weight, influence_scale, extra_dim, feature_scale,
            label_smoothing: as :class:`~bt2_hf.methods.BT2MethodConfig`, for each tower.
    """

    old_contrastive_weight: float = field(
        default=1.0, metadata={"help": "Weight of InfoNCE(b̂_text, φ_old(image)): the text block vs the old images."}
    )
    image_old_contrastive_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of InfoNCE(b̂_image, φ_old(image)): the new image block vs the old images (0: off)."},
    )


@register_method
class BT2PairMethod(CompatibilityMethod):
    """A BT² image–text pair: both towers' first ``d_old`` dimensions live in the old image space, their features
    ``f`` match the independent pair (``clip``), and the two towers are aligned CLIP-style on the full embeddings."""

    name = "bt2_pair"
    config_class = BT2PairConfig
    modality = "pair"
    requires = ("old", "independent")
    uses_prototypes = True
    requires_labels = False
    paper = BT2Method.paper

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.ancestor_prefix_dims:
            raise ValueError("ancestor_prefix_dims is supported for image towers only; leave it empty for pairs.")

    def build_config_overrides(self, reference_dims, embedding_dim):
        widths = {tower: reference_dims[f"independent_{tower}"] for tower in TOWERS}
        if widths["image"] != widths["text"]:
            raise ValueError(
                f"The independent pair's towers have {widths['image']}-d (image) and {widths['text']}-d (text) "
                "embeddings; a pair is aligned on its full embeddings, so both must have one width."
            )
        overrides = {}
        for tower in TOWERS:
            single = BT2Method.build_config_overrides(
                self, {"old": reference_dims["old"], "independent": widths[tower]}, embedding_dim
            )
            overrides[tower] = {**single, "head_nonlinearity": "none"}
        return overrides

    def compute_loss(self, outputs, targets, labels):
        config, old = self.config, targets["old"]
        image, text = outputs.image, outputs.text
        losses = config.contrastive(text.embeddings, image.embeddings)
        if config.old_contrastive_weight:
            losses["text_old_contrastive_loss"] = config.old_contrastive_weight * contrastive_loss(
                text.compatible_embeddings, old, temperature=config.contrastive_temperature
            )
        if config.image_old_contrastive_weight:
            losses["image_old_contrastive_loss"] = config.image_old_contrastive_weight * contrastive_loss(
                image.compatible_embeddings, old, temperature=config.contrastive_temperature
            )
        for tower, tower_outputs in (("image", image), ("text", text)):
            compatible = tower_outputs.compatible_embeddings
            losses[f"{tower}_old_match_loss"] = config.old_match_weight * cosine_matching_loss(compatible, old)
            losses[f"{tower}_new_match_loss"] = config.new_match_weight * cosine_matching_loss(
                tower_outputs.features, targets[f"independent_{tower}"]
            )
            if labels is not None and self.prototypes is not None:
                losses[f"{tower}_influence_loss"] = config.influence_weight * influence_loss(
                    compatible, self.prototypes, labels, scale=config.influence_scale
                )
        return {**losses, **_classification_terms(self, outputs, labels)}
