"""BCT (Shen et al., CVPR 2020): an influence loss through the old model's fixed class prototypes."""

from __future__ import annotations

from dataclasses import dataclass

from ..losses import classification_loss, influence_loss
from . import register_method
from .base import CompatibilityMethod, PrototypeInfluenceConfig


@dataclass
class BCTConfig(PrototypeInfluenceConfig):
    """Configuration of BCT (bt2-method §2): ``CE_ls(W φ, y) + influence_weight · CE_ls(φ[:d_old] · W_oᵀ, y)``.

    Args:
        influence_scale (`float`, *optional*, defaults to 1.0): inverse temperature of the influence logits (the
            research code: 1).
        influence_weight (`float`, *optional*, defaults to 10.0): weight of the influence loss (BCT's α).
        label_smoothing (`float`, *optional*, defaults to 0.1): label smoothing of both cross-entropies.
    """


@register_method
class BCTMethod(CompatibilityMethod):
    """Backward-compatible training with an influence loss (BCT).

    ``W_o`` holds the class means of the frozen old model's embeddings over the new training set. With a wider new
    embedding, ``W_o`` is zero-padded: only the first ``d_old`` dimensions are constrained ("naive dimension
    increase").
    """

    name = "bct"
    config_class = BCTConfig
    requires = ("old",)
    uses_prototypes = True
    paper = {
        "title": "Towards Backward-Compatible Representation Learning",
        "arxiv_id": "2003.11942",
        "url": "https://arxiv.org/abs/2003.11942",
        "citation": (
            "@inproceedings{shen2020towards,\n"
            "  title={Towards Backward-Compatible Representation Learning},\n"
            "  author={Shen, Yantao and Xiong, Yuanjun and Xia, Wei and Soatto, Stefano},\n"
            "  booktitle={CVPR},\n"
            "  year={2020}\n"
            "}"
        ),
    }

    def build_config_overrides(self, reference_dims, embedding_dim):
        old_dim = reference_dims["old"]
        embedding_dim = old_dim if embedding_dim is None else embedding_dim
        if embedding_dim < old_dim:
            raise ValueError(
                f"BCT needs an embedding at least as wide as the old model's ({old_dim}), got embedding_dim="
                f"{embedding_dim}. Set embedding_dim >= {old_dim} or leave it unset."
            )
        return {"head_type": "linear", "embedding_dim": embedding_dim, "compatible_dim": old_dim}

    def compute_loss(self, outputs, targets, labels):
        smoothing = self.config.label_smoothing
        return {
            "classification_loss": classification_loss(outputs.logits, labels, smoothing),
            # The un-renormalised prefix: φ·W_padᵀ with a zero-padded W_o, as in BCT.
            "influence_loss": self.config.influence_weight
            * influence_loss(
                outputs.embeddings, self.prototypes, labels, smoothing, scale=self.config.influence_scale
            ),
        }
