"""BT² (Zhou et al., ICCV 2023): backward-compatible training with basis transformation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from ..heads import bt2_embedding_dim
from ..losses import class_contrastive_loss, classification_loss, cosine_matching_loss, influence_loss
from . import register_method
from .base import CompatibilityMethod, PrototypeInfluenceConfig


@dataclass
class BT2MethodConfig(PrototypeInfluenceConfig):
    """Configuration of BT² (bt2-method §1.4–1.5).

    ``L = CE(W f, y) + influence_weight · CE(b̂ · W_oᵀ, y) + old_match_weight · (1 − cos(b̂, φ_old))
    + new_match_weight · (1 − cos(f̂, φ'_new))``

    Args:
        influence_scale (`float`, *optional*, defaults to 1.0): inverse temperature of the influence logits (the
            research code: 1).
        influence_weight (`float`, *optional*, defaults to 10.0): weight of the influence loss of the compatible
            block through the old prototypes (the research code's λ2).
        old_match_weight (`float`, *optional*, defaults to 5.0): weight of matching the compatible block to the old
            model's embedding (λ3).
        new_match_weight (`float`, *optional*, defaults to 1.0): weight of matching the feature ``f`` to the
            independently trained new model (λ1).
        old_class_contrastive_weight (`float`, *optional*, defaults to 0.0): weight of a supervised contrastive
            (soft nearest-neighbour) term: each compatible block must rank the old model's embeddings of its class
            above the other classes' (``losses.class_contrastive_loss``); 0 turns it off.
        old_class_contrastive_temperature (`float`, *optional*, defaults to 0.1): that term's temperature.
        old_class_contrastive_keys (`str`, *optional*, defaults to `"batch"`): the old embeddings it ranks: the
            batch's, or ``"training_set"``, the stored old embeddings of every training image (a memory bank: the
            old gallery as a query will meet it; needs ``reference_targets="precomputed"``).
        old_match_target (`str`, *optional*, defaults to `"self"`): the old-match target of each training image:
            ``"self"``, the old model's embedding of that image (the paper), or ``"class_neighbours"``, the unit mean
            of the old embeddings of its ``old_match_neighbours`` nearest training images of the same class (itself
            included). The second is a denoised target in the dense part of the class, where a nearest-item search of
            the old gallery more often returns the right class; it needs stored targets
            (``reference_targets="precomputed"``) and labels.
        old_match_neighbours (`int`, *optional*, defaults to 10): the neighbours ``"class_neighbours"`` averages.
        extra_dim (`int`, *optional*, defaults to 32): ``k``, the dimensions added to the new feature.
        feature_scale (`float`, *optional*, defaults to 2.0): ``C``, the weight of the new feature against the added
            branch inside the basis transformation.
        label_smoothing (`float`, *optional*, defaults to 0.0): the research code's BT² trainer uses none.
        ancestor_prefix_dims (`list[int]`, *optional*, defaults to `[]`): in a series of updates, the prefix widths of
            the old embedding that are themselves compatible with older models (its lineage: for ``v3`` trained on
            ``v2``, ``[d_1]``). Each prefix gets the same two compatibility losses as the whole block, on the
            re-normalised prefixes ``b̂[:d_j]`` against ``φ_old[:d_j]`` and the prototypes ``W_o[:, :d_j]``:

            ``+ Σ_j influence_weight · CE(b̂_j · W_o[:, :d_j]ᵀ, y) + old_match_weight · (1 − cos(b̂_j, φ_old[:d_j]))``

            Without them an older model is reached only through the whole old embedding, where its prefix is a small
            share of the cosine; small errors there cost retrieval against that older gallery (the step from ``v2``
            to ``v3`` loses ``v1``).
    """

    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label smoothing of the classification loss (BT²'s research code uses none)."}
    )
    old_match_weight: float = field(
        default=5.0, metadata={"help": "Weight of the cosine match of the compatible block to the old model."}
    )
    new_match_weight: float = field(
        default=1.0, metadata={"help": "Weight of the cosine match of the feature f to the independent new model."}
    )
    old_class_contrastive_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a supervised contrastive term ranking, for each compatible block, the old model's "
            "embeddings of its class above the others in the batch (0: off)."
        },
    )
    old_class_contrastive_temperature: float = field(
        default=0.1, metadata={"help": "Temperature of the supervised contrastive term against the old embeddings."}
    )
    old_class_contrastive_keys: str = field(
        default="batch",
        metadata={
            "help": "The old embeddings the contrastive term ranks: 'batch' (the batch's) or 'training_set' (the "
            "stored old embeddings of every training image, a memory bank).",
            "choices": ["batch", "training_set"],
        },
    )
    old_match_target: str = field(
        default="self",
        metadata={
            "help": "What the compatible block is matched to: 'self' (the old model's embedding of the same image, "
            "as the paper) or 'class_neighbours' (the mean of its nearest same-class old embeddings).",
            "choices": ["self", "class_neighbours"],
        },
    )
    old_match_neighbours: int = field(
        default=10, metadata={"help": "How many same-class old embeddings 'class_neighbours' averages."}
    )
    extra_dim: int = field(default=32, metadata={"help": "k: dimensions added on top of the new feature."})
    feature_scale: float = field(
        default=2.0, metadata={"help": "C: weight of the new feature against the added branch in the transformation."}
    )
    ancestor_prefix_dims: list[int] = field(
        default_factory=list,
        metadata={"help": "Prefix widths of the old embedding compatible with older models; each is matched too."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.old_match_neighbours < 1:
            raise ValueError(f"old_match_neighbours must be at least 1, got {self.old_match_neighbours}.")
        if self.extra_dim < 0:
            raise ValueError(f"extra_dim must be >= 0, got {self.extra_dim}.")
        if self.feature_scale <= 0:
            raise ValueError(f"feature_scale must be positive, got {self.feature_scale}.")
        self.ancestor_prefix_dims = [int(d) for d in self.ancestor_prefix_dims]
        if any(d <= 0 for d in self.ancestor_prefix_dims) or len(set(self.ancestor_prefix_dims)) != len(
            self.ancestor_prefix_dims
        ):
            raise ValueError(
                f"ancestor_prefix_dims must be distinct positive widths, got {self.ancestor_prefix_dims}."
            )


@register_method
class BT2Method(CompatibilityMethod):
    """BT²: a basis-transformation head whose first ``d_old`` dimensions are matched to the old model, while the
    new feature ``f`` is matched to the independently trained new model (so the update pays no compatibility tax)."""

    name = "bt2"
    config_class = BT2MethodConfig
    requires = ("old", "independent")
    uses_prototypes = True
    paper = {
        "title": "BT^2: Backward-compatible Training with Basis Transformation",
        "arxiv_id": "2211.03989",
        "url": "https://arxiv.org/abs/2211.03989",
        "citation": (
            "@inproceedings{zhou2023bt2,\n"
            "  title={BT^2: Backward-compatible Training with Basis Transformation},\n"
            "  author={Zhou, Yifei and Li, Zilu and Shrivastava, Abhinav and Zhao, Hengshuang and Torralba, Antonio"
            " and Tian, Taipeng and Lim, Ser-Nam},\n"
            "  booktitle={ICCV},\n"
            "  pages={11229--11238},\n"
            "  year={2023}\n"
            "}"
        ),
    }

    def build_config_overrides(self, reference_dims, embedding_dim):
        feature_dim = reference_dims["independent"]
        too_wide = [d for d in self.config.ancestor_prefix_dims if d >= reference_dims["old"]]
        if too_wide:
            raise ValueError(
                f"ancestor_prefix_dims {too_wide} are not shorter than the old model's {reference_dims['old']}-d "
                "embedding: list only the prefixes of older versions (the whole old embedding is always matched)."
            )
        if embedding_dim is not None and embedding_dim != bt2_embedding_dim(feature_dim, self.config.extra_dim):
            raise ValueError(
                f"A BT² model's embedding_dim is the independent model's width + extra_dim = {feature_dim} + "
                f"{self.config.extra_dim}; got embedding_dim={embedding_dim}. Leave embedding_dim unset."
            )
        return {
            "head_type": "basis_transformation",
            "feature_dim": feature_dim,
            "old_embedding_dim": reference_dims["old"],
            "extra_dim": self.config.extra_dim,
            "feature_scale": self.config.feature_scale,
        }

    def target_roles(self):
        # Without the new-match term f is not matched: the independent model then only sets f's width (and, for a
        # fine-tune, the starting weights), and embedding every batch with it would be wasted time.
        return self.requires if self.config.new_match_weight else ("old",)

    def prepare_targets(self, precomputed, labels):
        config = self.config
        self._old_keys = None
        if config.old_class_contrastive_weight and config.old_class_contrastive_keys == "training_set":
            if "old" not in precomputed or labels is None:
                raise ValueError(
                    "old_class_contrastive_keys='training_set' ranks the old embeddings of every training image: it "
                    "needs them stored before training (reference_targets='precomputed') and class labels."
                )
            # The old model's own embeddings (never the neighbour-averaged targets below), unit rows, with classes.
            self._old_keys = (F.normalize(precomputed["old"].float(), dim=-1), labels.to(precomputed["old"].device))
        if config.old_match_target == "self":
            return precomputed
        if "old" not in precomputed:
            raise ValueError(
                "old_match_target='class_neighbours' needs the old model's targets stored before training: set "
                "reference_targets='precomputed' (or give an old-target column)."
            )
        if labels is None:
            raise ValueError("old_match_target='class_neighbours' needs class labels; use old_match_target='self'.")
        neighbours = class_neighbour_means(precomputed["old"], labels, self.config.old_match_neighbours)
        return {**precomputed, "old": neighbours.to(precomputed["old"].dtype)}

    def compute_loss(self, outputs, targets, labels):
        config = self.config
        # compatible_embeddings is b̂ (the old-compatible block, re-normalised); features is f̂.
        return {
            "classification_loss": classification_loss(outputs.logits, labels, config.label_smoothing),
            "influence_loss": config.influence_weight
            * influence_loss(outputs.compatible_embeddings, self.prototypes, labels, scale=config.influence_scale),
            "old_match_loss": config.old_match_weight
            * cosine_matching_loss(outputs.compatible_embeddings, targets["old"]),
            **self._new_match(outputs.features, targets),
            **self._ancestor_losses(outputs.compatible_embeddings, targets["old"], labels),
            **self._old_class_contrastive(outputs.compatible_embeddings, targets["old"], labels),
        }

    def _new_match(self, features, targets) -> dict:
        if not self.config.new_match_weight:
            return {}
        return {
            "new_match_loss": self.config.new_match_weight * cosine_matching_loss(features, targets["independent"])
        }

    def _old_class_contrastive(self, compatible, old_targets, labels) -> dict:
        config = self.config
        if not config.old_class_contrastive_weight or labels is None:
            return {}
        keys, key_labels = getattr(self, "_old_keys", None) or (old_targets, None)
        loss = class_contrastive_loss(
            compatible, keys, labels, config.old_class_contrastive_temperature, key_labels=key_labels
        )
        return {"old_class_contrastive_loss": config.old_class_contrastive_weight * loss}

    def _ancestor_losses(self, compatible, old_targets, labels) -> dict:
        if not self.config.ancestor_prefix_dims:
            return {}
        config = self.config
        influence = match = 0.0
        for width in config.ancestor_prefix_dims:
            # re-normalised, as retrieval against that ancestor's gallery truncates and re-normalises
            prefix = F.normalize(compatible[:, :width], dim=-1)
            influence = influence + influence_loss(
                prefix, self.prototypes[:, :width], labels, scale=config.influence_scale
            )
            match = match + cosine_matching_loss(prefix, old_targets[:, :width])
        return {
            "ancestor_influence_loss": config.influence_weight * influence,
            "ancestor_match_loss": config.old_match_weight * match,
        }


@torch.no_grad()
def class_neighbour_means(
    table: torch.Tensor, labels: torch.Tensor, num_neighbours: int, chunk_size: int = 4096
) -> torch.Tensor:
    """Each row replaced by the unit mean of its ``num_neighbours`` nearest rows of the same class (itself included).

    A denoised per-item target for matching the old model: one old embedding is a noisy sample of where its class
    lies in the old space, and the mean of its same-class neighbours sits in the dense part of that class, where a
    nearest-item search of the old gallery is likelier to return the right class. Neighbours are by cosine.

    Args:
        table (`torch.Tensor` of shape `(N, d)`): one embedding per training row.
        labels (`torch.LongTensor` of shape `(N,)`): the rows' classes.
        num_neighbours (`int`): how many same-class rows to average (clipped to the class's size); 1 returns the
            normalised table.
        chunk_size (`int`, *optional*, defaults to 4096): rows compared at once (memory: ``chunk_size × class size``).

    Returns:
        `torch.Tensor` of shape `(N, d)`: unit rows, a new tensor (``table`` is left as it is).
    """
    if num_neighbours < 1:
        raise ValueError(f"num_neighbours must be at least 1, got {num_neighbours}.")
    if table.shape[0] != labels.shape[0]:
        raise ValueError(f"table has {table.shape[0]} rows but labels has {labels.shape[0]}.")
    unit = F.normalize(table.float(), dim=-1)
    labels = labels.to(unit.device)
    result = torch.empty_like(unit)
    for label in torch.unique(labels):
        rows = torch.nonzero(labels == label).flatten()
        members = unit[rows]
        k = min(num_neighbours, len(rows))
        for start in range(0, len(rows), chunk_size):
            similarity = members[start : start + chunk_size] @ members.T
            nearest = similarity.topk(k, dim=1).indices
            result[rows[start : start + chunk_size]] = members[nearest].mean(dim=1)
    return F.normalize(result, dim=-1)
