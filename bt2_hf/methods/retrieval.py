"""BT² and BCT heads for query → document retrieval, trained on a frozen encoder's cached features.

A corpus was embedded with an old text encoder (its gallery). A new encoder arrives, frozen; only a head on its pooled
output trains, from cached arrays (:func:`bt2_hf.training.train_retrieval_head`). A batch is ``B`` (query,
relevant document) pairs; the new model embeds both sides (one symmetric encoder, as sentence-transformers models
are), the old gallery gives each document's old embedding. With ``q``, ``d`` the new model's outputs for the queries
and their documents, ``d_old`` (and optionally ``q_old``) the old model's embeddings, and ``InfoNCE`` the in-batch
contrastive loss that leaves other relevant pairs of the batch out of its softmax
(:func:`bt2_hf.losses.relevance_masked_contrastive_loss`):

``L = new_contrastive_weight · InfoNCE(q.embedding, d.embedding)``            (new/new: the new model's own search)
``  + old_contrastive_weight · InfoNCE(q.compatible, d_old)``                 (new query → old gallery)
``  + old_match_weight · mean(1 − cos(d.compatible, d_old) [, 1 − cos(q.compatible, q_old)])``
``  + new_match_weight · mean(1 − cos(f, normalize(pooled)))``               (BT² only, queries and documents)

The second term is BCT's influence loss carried to instance-level retrieval: instead of class prototypes of the old
model, the old gallery's own rows are the classifier, and a new query must pick its document's old embedding among
the batch's. The third is BT²'s λ3 (the compatible block of the same text matches the old model's embedding of it).
The fourth is BT²'s λ1 with the frozen encoder's own sentence embedding (mean pooling, then L2 normalisation: how
sentence-transformers models such as all-mpnet-base-v2 embed) as the independent model ``φ'_new``: the feature ``f``,
recoverable from the BT² embedding, stays the new encoder's embedding, which is what keeps the compatibility tax
small.

``bct`` is the same without basis transformation or extra dimensions: a linear head whose whole embedding lives in
the old space (width ``d_old``), trained with the first three terms.

These are not registry methods (:func:`bt2_hf.methods.get_method`): ``bt2 train`` trains towers on labelled images
or image–text rows, and these heads train on cached query–document features only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..losses import cosine_matching_loss, relevance_masked_contrastive_loss

RETRIEVAL_HEAD_METHODS = ("bt2", "bct")


@dataclass
class RetrievalHeadConfig:
    """The method and loss weights of a retrieval head (see the module docstring for the loss).

    Args:
        method (`str`, *optional*, defaults to `"bt2"`): ``"bt2"`` (basis-transformation head: old-compatible block
            plus extra dimensions) or ``"bct"`` (linear head of the old width).
        contrastive_temperature (`float`, *optional*, defaults to 0.05): temperature of both InfoNCE terms.
        new_contrastive_weight (`float`, *optional*, defaults to 1.0): InfoNCE between the new query and document
            embeddings (the full embedding).
        old_contrastive_weight (`float`, *optional*, defaults to 1.0): InfoNCE between the new queries' compatible
            block and the old gallery's embeddings of their documents.
        old_match_weight (`float`, *optional*, defaults to 20.0): BT²'s λ3: cosine match of the compatible block to
            the old model's embedding of the same text (documents; queries too when old query embeddings are given).
            Chosen on validation (MiniLM → MPNet): 1 < 5 < 20 on new → old for both methods, new → new unchanged.
        new_match_weight (`float`, *optional*, defaults to 1.0): BT² only, λ1: cosine match of the feature ``f`` to
            the frozen encoder's own normalised embedding.
        extra_dim (`int`, *optional*, defaults to 32): BT² only, ``k``: the added branch's width (the embedding is
            ``feature_dim + k`` wide, see :class:`~bt2_hf.heads.BasisTransformationHead`).
        feature_scale (`float`, *optional*, defaults to 2.0): BT² only, ``C``: weight of ``f`` against the added
            branch.
    """

    method: str = field(default="bt2", metadata={"help": "bt2 or bct."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "Temperature of the InfoNCE terms."})
    new_contrastive_weight: float = field(default=1.0, metadata={"help": "InfoNCE(new query, new document)."})
    old_contrastive_weight: float = field(default=1.0, metadata={"help": "InfoNCE(new query block, old document)."})
    old_match_weight: float = field(default=20.0, metadata={"help": "λ3: 1 − cos(compatible block, old embedding)."})
    new_match_weight: float = field(default=1.0, metadata={"help": "BT² λ1: 1 − cos(f, frozen encoder embedding)."})
    extra_dim: int = field(default=32, metadata={"help": "BT² k: added dimensions."})
    feature_scale: float = field(default=2.0, metadata={"help": "BT² C: weight of f against the added branch."})

    def __post_init__(self) -> None:
        if self.method not in RETRIEVAL_HEAD_METHODS:
            raise ValueError(
                f"Unknown retrieval head method {self.method!r}; choose one of {list(RETRIEVAL_HEAD_METHODS)}."
            )
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be positive, got {self.contrastive_temperature}.")
        for item in dataclasses.fields(self):
            if item.name.endswith("_weight") and getattr(self, item.name) < 0:
                raise ValueError(f"{item.name} must be >= 0, got {getattr(self, item.name)}.")
        if self.extra_dim < 0:
            raise ValueError(f"extra_dim must be >= 0, got {self.extra_dim}.")
        if self.feature_scale <= 0:
            raise ValueError(f"feature_scale must be positive, got {self.feature_scale}.")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (recorded in ``config.training["method_config"]``)."""
        values = dataclasses.asdict(self)
        if self.method == "bct":  # fields BCT has no use for are not recorded as if they mattered
            for name in ("new_match_weight", "extra_dim", "feature_scale"):
                values.pop(name)
        return values

    def head_config(self, feature_width: int, old_dim: int) -> dict[str, Any]:
        """The :class:`~bt2_hf.BT2Config` head fields for a frozen encoder of width ``feature_width``.

        BT²'s ``feature_dim`` is the encoder's own width (so ``f`` can be its embedding), without a ReLU (its
        embedding has signed coordinates); BCT's linear head is exactly ``old_dim`` wide.
        """
        if self.method == "bct":
            return {"head_type": "linear", "embedding_dim": old_dim, "compatible_dim": old_dim,
                    "head_nonlinearity": "none"}  # fmt: skip
        return {
            "head_type": "basis_transformation",
            "feature_dim": feature_width,
            "old_embedding_dim": old_dim,
            "extra_dim": self.extra_dim,
            "feature_scale": self.feature_scale,
            "head_nonlinearity": "none",
        }


def retrieval_head_losses(
    config: RetrievalHeadConfig,
    queries: Any,
    documents: Any,
    old_documents: torch.Tensor,
    old_queries: torch.Tensor | None = None,
    relevant: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch of (query, relevant document) pairs.

    Args:
        config (:class:`RetrievalHeadConfig`): method and weights.
        queries (:class:`~bt2_hf.BT2Output`): the trained model's outputs for the batch's queries (its
            ``pooler_output`` is the frozen encoder's cached feature).
        documents (:class:`~bt2_hf.BT2Output`): the same for their documents (row ``i`` pairs with query ``i``).
        old_documents (`torch.Tensor` of shape `(batch, d_old)`): the old gallery's embeddings of the documents.
        old_queries (`torch.Tensor` of shape `(batch, d_old)`, *optional*): the old model's embeddings of the queries.
        relevant (`torch.BoolTensor` of shape `(batch, batch)`, *optional*): ``relevant[i, j]``: document ``j`` is
            relevant to query ``i`` (kept out of the negatives).

    Returns:
        `dict[str, torch.Tensor]` of scalar losses already multiplied by their weights; the total is their sum.
    """
    temperature = config.contrastive_temperature
    terms: dict[str, torch.Tensor] = {}
    if config.new_contrastive_weight:
        terms["new_contrastive_loss"] = config.new_contrastive_weight * relevance_masked_contrastive_loss(
            queries.embeddings, documents.embeddings, relevant, temperature
        )
    if config.old_contrastive_weight:
        terms["old_contrastive_loss"] = config.old_contrastive_weight * relevance_masked_contrastive_loss(
            queries.compatible_embeddings, old_documents, relevant, temperature
        )
    if config.old_match_weight:
        predicted, targets = documents.compatible_embeddings, old_documents
        if old_queries is not None:
            predicted = torch.cat([predicted, queries.compatible_embeddings])
            targets = torch.cat([targets, old_queries])
        terms["old_match_loss"] = config.old_match_weight * cosine_matching_loss(predicted, targets)
    if config.method == "bt2" and config.new_match_weight:
        features = torch.cat([queries.features, documents.features])
        own = torch.cat([queries.pooler_output, documents.pooler_output])  # normalised inside the loss
        terms["new_match_loss"] = config.new_match_weight * cosine_matching_loss(features, own)
    if not terms:
        raise ValueError("Every loss weight is 0: nothing would train. Give at least one term a positive weight.")
    return terms


def unlabelled_match_losses(
    config: RetrievalHeadConfig, texts: Any, old_embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The match terms on texts without relevance labels, embedded by both models (more data for the map into the
    old space): ``old_match_weight · (1 − cos(compatible, old))`` and, for BT², ``new_match_weight · (1 − cos(f,
    normalize(pooled)))``.

    Args:
        config (:class:`RetrievalHeadConfig`): method and weights.
        texts (:class:`~bt2_hf.BT2Output`): the trained model's outputs for the texts.
        old_embeddings (`torch.Tensor` of shape `(batch, d_old)`): the old model's embeddings of the same texts.
    """
    terms = {}
    if config.old_match_weight:
        terms["unlabelled_old_match_loss"] = config.old_match_weight * cosine_matching_loss(
            texts.compatible_embeddings, old_embeddings
        )
    if config.method == "bt2" and config.new_match_weight:
        terms["unlabelled_new_match_loss"] = config.new_match_weight * cosine_matching_loss(
            texts.features, texts.pooler_output
        )
    return terms
