"""Train a BT² or BCT head on a frozen text encoder's cached features, for query → document retrieval.

The frozen encoder runs once per text, outside (:func:`encoder_features` computes what it caches: the backbone's
pooled output); every step then runs the head only, so a run on tens of thousands of pairs takes seconds to a minute
on a CPU. The losses are :mod:`bt2_hf.methods.retrieval`'s. The result is a complete
:class:`~bt2_hf.BT2Model` (the frozen encoder + the trained head, with the encoder's tokenizer) that saves with
``save_pretrained`` (fingerprinted), reloads with ``from_pretrained`` and loads in sentence-transformers.

Why not :func:`bt2_hf.training.train`: that loop trains towers on labelled images or image–text rows; a retrieval
head needs pairs of two texts embedded by the *same* model, a relevance mask inside the batch, and the old gallery's
rows as targets, and none of the machinery that a trained backbone needs (data loading, accelerate, checkpoints).

The BT² head's two orthogonal maps are ``base · expm(A − Aᵀ)`` (:class:`~bt2_hf.heads.OrthogonalLinear`); the matrix
exponential of the 768 × 768 map costs about a second per step on one CPU core. During training each map is
therefore parametrised by the Cayley transform, ``base · (I + S)⁻¹ (I − S)`` with ``S = A − Aᵀ`` (one linear solve,
~20× cheaper, exactly orthogonal too), and folded back at the end: ``base`` becomes the trained orthogonal matrix and
``A`` zero, so the saved head is a plain :class:`~bt2_hf.heads.BasisTransformationHead` computing the same map.

Defaults (``old_match_weight`` 20, learning rate BT² 1e-3 / BCT 1e-2, 500 steps of 256 pairs) were chosen on the
validation split of the WordNet reverse dictionary, all-MiniLM-L6-v2 → all-mpnet-base-v2; the settings compared and
the test numbers (3 seeds) are in ``docs/text_upgrade_training.md``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compatibility import trained_against
from ..configuration_bt2 import BT2Config
from ..errors import BT2InputError
from ..heads import BasisTransformationHead, OrthogonalLinear
from ..methods.retrieval import RetrievalHeadConfig, retrieval_head_losses, unlabelled_match_losses
from ..modeling_bt2 import BT2Model

logger = logging.getLogger(__name__)

# Peak learning rates chosen on the WordNet reverse dictionary's validation split (MiniLM → MPNet, 500 steps of 256
# pairs): BT² was insensitive between 1e-3 and 1e-2; BCT's linear head did better at 1e-2.
DEFAULT_LEARNING_RATES = {"bt2": 1e-3, "bct": 1e-2}


@dataclass
class RetrievalHeadResult:
    """What :func:`train_retrieval_head` returns.

    Args:
        model (:class:`~bt2_hf.BT2Model`): the frozen encoder with the trained head, in eval mode, on the CPU.
        train_seconds (`float`): wall time of the optimisation steps (building the model not included).
        history (`list[dict]`): the loss terms (and learning rate) at the first step, every ``log_every``
            steps and at the last one.
    """

    model: BT2Model
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class _CayleyRotation(nn.Module):
    """Training-time stand-in for an :class:`OrthogonalLinear`: ``W = base · (I + S)⁻¹ (I − S)``, ``S = A − Aᵀ``.

    Exactly orthogonal for any ``A`` and equal to ``base`` at ``A = 0``, like the matrix-exponential map, but one
    linear solve instead of a matrix exponential.
    """

    def __init__(self, rotation: OrthogonalLinear):
        super().__init__()
        self.register_buffer("base", rotation.weight.detach().clone())
        self.skew = nn.Parameter(torch.zeros_like(self.base))

    @property
    def weight(self) -> torch.Tensor:
        skew = self.skew - self.skew.T
        identity = torch.eye(len(skew), dtype=skew.dtype, device=skew.device)
        return self.base @ torch.linalg.solve(identity + skew, identity - skew)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ self.weight.T.to(inputs.dtype)


def _swap_in_cayley(head: nn.Module) -> dict[str, OrthogonalLinear]:
    originals = {}
    if isinstance(head, BasisTransformationHead):
        for name in ("feature_rotation", "old_rotation"):
            originals[name] = getattr(head, name)
            setattr(head, name, _CayleyRotation(originals[name]))
    return originals


@torch.no_grad()
def _fold_cayley(head: nn.Module, originals: dict[str, OrthogonalLinear]) -> None:
    for name, rotation in originals.items():
        trained = getattr(head, name)
        rotation.base.copy_(trained.weight.to(rotation.base.dtype))
        rotation.skew.zero_()  # expm(0) = I: the saved map is base itself
        setattr(head, name, rotation)


def _as_rows(values: Any, name: str, width: int | None = None) -> torch.Tensor:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise BT2InputError(f"{name} must be a non-empty 2-D array (rows × dims), got shape {array.shape}.")
    if width is not None and array.shape[1] != width:
        raise BT2InputError(f"{name} has {array.shape[1]} dims, expected {width}.")
    if not np.isfinite(array).all():
        raise BT2InputError(
            f"{name} holds NaN or infinite values (row {int(np.argwhere(~np.isfinite(array))[0, 0])})."
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_pairs(pairs: Any, num_queries: int, num_documents: int) -> np.ndarray:
    if pairs is None:
        if num_queries != num_documents:
            raise BT2InputError(
                f"Without pairs, row i of the queries pairs with row i of the documents, but there are {num_queries} "
                f"query rows and {num_documents} document rows. Pass pairs=(query row, document row) indices."
            )
        return np.stack([np.arange(num_queries), np.arange(num_queries)], axis=1)
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or not np.issubdtype(pairs.dtype, np.integer):
        raise BT2InputError(
            f"pairs must be a non-empty integer array of shape (n, 2), got {pairs.dtype} {pairs.shape}."
        )
    for column, (label, count) in enumerate((("query", num_queries), ("document", num_documents))):
        bad = (pairs[:, column] < 0) | (pairs[:, column] >= count)
        if bad.any():
            raise BT2InputError(f"pairs[{int(np.argmax(bad))}] names {label} row {pairs[bad][0, column]}, "
                                f"outside the {count} {label} rows.")  # fmt: skip
    return pairs.astype(np.int64)


def _data_fingerprint(*arrays: torch.Tensor | np.ndarray | None) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        array = array.numpy() if isinstance(array, torch.Tensor) else array
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _build_model(new_encoder: BT2Model | str | os.PathLike, head: dict[str, Any]) -> BT2Model:
    """The frozen encoder with a fresh head (initialised from the global RNG, which the caller seeded)."""
    if isinstance(new_encoder, BT2Model):
        source = new_encoder.config
        training = {k: source.training[k] for k in ("init_from", "init_from_revision") if k in source.training}
        config = BT2Config(backbone_type=source.backbone_type, backbone_config=source.backbone_config,
                           pooling=source.pooling, base_model=source.base_model, training=training, **head)  # fmt: skip
        model = BT2Model(config)
        model.backbone.load_state_dict(new_encoder.backbone.state_dict())
        model.processor = new_encoder.processor
        return model
    return BT2Model.from_pretrained_backbone(str(new_encoder), "hf_text", pooling="mean", **head)


@torch.no_grad()
def _start_from_encoder_embedding(model: BT2Model) -> None:
    """BT²: ``f`` starts as the frozen encoder's own embedding (identity on the first ``feature_dim`` rows, no bias),
    the independent model of this setting, as BT² starts from the independent model's weights."""
    projection = model.head.projection
    width = model.head.feature_dim
    projection.weight[:width].copy_(torch.eye(width, projection.in_features))
    projection.bias[:width].zero_()


def _trained_against(name: str | None, fingerprint: str | None, old_dim: int, revision: str | None):
    """What the head trained against (a record, not a claim), or ``None`` when the caller did not name the old model."""
    return None if name is None else trained_against(name, fingerprint, old_dim, revision)


def _relevance_lookup(pairs: np.ndarray, num_documents: int):
    codes = np.unique(pairs[:, 0] * num_documents + pairs[:, 1])

    def relevant(batch_pairs: np.ndarray) -> torch.Tensor:
        asked = batch_pairs[:, 0][:, None] * num_documents + batch_pairs[:, 1][None, :]
        where = np.clip(np.searchsorted(codes, asked), 0, len(codes) - 1)
        return torch.from_numpy(codes[where] == asked)

    return relevant


def train_retrieval_head(
    new_encoder: BT2Model | str | os.PathLike,
    query_features: Any,
    document_features: Any,
    old_document_embeddings: Any,
    pairs: Any = None,
    old_query_embeddings: Any = None,
    *,
    config: RetrievalHeadConfig | None = None,
    steps: int = 500,
    batch_size: int = 256,
    learning_rate: float | None = None,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    seed: int = 0,
    old_model: str | None = None,
    old_model_fingerprint: str | None = None,
    old_model_revision: str | None = None,
    unlabelled_features: Any = None,
    unlabelled_old_embeddings: Any = None,
    log_every: int = 50,
) -> RetrievalHeadResult:
    r"""Train a BT² (or BCT) head on cached features of (query, relevant document) pairs; the encoder stays frozen.

    Args:
        new_encoder (:class:`~bt2_hf.BT2Model`, `str` or `os.PathLike`): the new text encoder: a transformers
            checkpoint folder or Hub id (e.g. a sentence-transformers all-mpnet-base-v2 folder; mean pooling), or a
            ``BT2Model`` whose backbone, pooling and tokenizer are reused (its head is not).
        query_features (array of shape `(num_queries, hidden)`): the encoder's pooled output for each training
            query (:func:`encoder_features`), float.
        document_features (array of shape `(num_documents, hidden)`): the same for the documents.
        old_document_embeddings (array of shape `(num_documents, d_old)`): the old model's embeddings of the same
            documents (the old gallery's rows); ``d_old`` is the compatible block's width.
        pairs (integer array of shape `(num_pairs, 2)`, *optional*): (query row, document row) of every relevant
            pair; a query with several relevant documents has several pairs. ``None``: row ``i`` ↔ row ``i``.
        old_query_embeddings (array of shape `(num_queries, d_old)`, *optional*): the old model's query
            embeddings; with them the old-match term also pulls the queries' compatible block to them.
        config (:class:`~bt2_hf.methods.retrieval.RetrievalHeadConfig`, *optional*): method (``"bt2"`` or
            ``"bct"``), loss weights and BT²'s ``extra_dim`` / ``feature_scale``; defaults to BT².
        steps (`int`, *optional*, defaults to 500): optimisation steps (each a batch of pairs, drawn without
            replacement, epoch after epoch).
        batch_size (`int`, *optional*, defaults to 256): pairs per batch (capped at the number of pairs); every
            other pair of the batch is a negative, unless it is relevant too.
        learning_rate (`float`, *optional*): AdamW's peak rate (linear warm-up, then cosine to 0); defaults to the
            rate chosen on validation for the method (:data:`DEFAULT_LEARNING_RATES`: BT² 1e-3, BCT 1e-2).
        weight_decay (`float`, *optional*, defaults to 0.0): AdamW's decoupled weight decay.
        warmup_steps (`int`, *optional*): defaults to 5 % of ``steps``.
        seed (`int`, *optional*, defaults to 0): seeds the head's initialisation (through torch's global generator,
            as ``transformers.set_seed`` does) and the batch order: the same inputs and seed give the same weights.
        old_model (`str`, *optional*), old_model_fingerprint (`str`, *optional*), old_model_revision (`str`,
            *optional*): the old model the gallery was made with, recorded in ``config.training["trained_against"]``
            (a record of what it trained against, never a compatibility claim: ``bt2 verify`` measures that).
        unlabelled_features (array of shape `(num_texts, hidden)`, *optional*), unlabelled_old_embeddings (array
            of shape `(num_texts, d_old)`, *optional*): texts without relevance labels (e.g. more text of the
            corpus' kind, never the evaluation queries), embedded by both encoders; each step also draws
            ``batch_size`` of them for the match terms (:func:`~bt2_hf.methods.retrieval.unlabelled_match_losses`):
            more data for the map into the old space. Give both or neither.
        log_every (`int`, *optional*, defaults to 50): steps between two entries of ``history``.

    Returns:
        :class:`RetrievalHeadResult`: the model (eval mode, CPU), the training seconds and the loss history.

    Raises:
        `BT2InputError`: arrays of the wrong shape or width, non-finite values, pairs out of range.
        `FloatingPointError`: a loss term became NaN or infinite (the step and the term are named); nothing is returned.

    Example:

    ```python
    >>> result = train_retrieval_head(
    ...     "path/to/all-mpnet-base-v2", mpnet_query_features, mpnet_document_features, minilm_document_embeddings,
    ...     config=RetrievalHeadConfig(method="bt2", extra_dim=32), steps=500, seed=0,
    ... )  # doctest: +SKIP
    >>> result.model.save_pretrained("mpnet-bt2")  # doctest: +SKIP
    ```
    """
    config = config or RetrievalHeadConfig()
    learning_rate = DEFAULT_LEARNING_RATES[config.method] if learning_rate is None else learning_rate
    if steps <= 0 or batch_size <= 1 or learning_rate <= 0 or log_every <= 0:
        raise ValueError(
            f"steps, log_every and learning_rate must be positive and batch_size at least 2 (in-batch negatives), got "
            f"steps={steps}, batch_size={batch_size}, learning_rate={learning_rate}, log_every={log_every}."
        )
    data = _HeadTrainingData.checked(query_features, document_features, old_document_embeddings, pairs,
                                     old_query_embeddings, unlabelled_features, unlabelled_old_embeddings)  # fmt: skip
    batch_size = min(batch_size, len(data.pairs))
    warmup_steps = max(1, round(0.05 * steps)) if warmup_steps is None else warmup_steps

    torch.manual_seed(seed)
    model = _build_model(new_encoder, config.head_config(data.hidden, data.old_dim))
    if model.backbone.hidden_size != data.hidden:
        raise BT2InputError(f"The features are {data.hidden}-d but the encoder's pooled output is "
                            f"{model.backbone.hidden_size}-d: cache them with this encoder (encoder_features).")  # fmt: skip
    if config.method == "bt2":
        _start_from_encoder_embedding(model)
    model.backbone.requires_grad_(False).eval()
    head = model.head
    originals = _swap_in_cayley(head)
    head.train()
    started = time.perf_counter()
    history = _optimise_head(model, config, data, steps, batch_size, learning_rate, weight_decay, warmup_steps, seed,
                             log_every)  # fmt: skip
    train_seconds = time.perf_counter() - started
    _fold_cayley(head, originals)
    model.eval()
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise FloatingPointError(f"The trained {name} holds NaN or infinite values; nothing is returned.")
    model.config.training = {
        **model.config.training,
        "method": f"{config.method}_retrieval_head",
        "method_config": config.to_dict(),
        "modality": "text",
        "freeze_backbone": True,
        "steps": steps,
        "seed": seed,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "optimizer": "adamw",
        "lr_scheduler_type": "cosine",
        "num_train_pairs": int(len(data.pairs)),
        "num_unlabelled_texts": 0 if data.unlabelled is None else int(len(data.unlabelled)),
        "train_data_sha256": _data_fingerprint(
            data.queries,
            data.documents,
            data.old_documents,
            data.old_queries,
            data.pairs,
            data.unlabelled,
            data.unlabelled_old,
        ),  # fmt: skip
        "train_seconds": round(train_seconds, 3),
        "trained_against": _trained_against(old_model, old_model_fingerprint, data.old_dim, old_model_revision),
        "bt2_hf_trainer": "cached_features",
    }
    logger.info("Trained the %s retrieval head: %d steps in %.1f s", config.method, steps, train_seconds)
    return RetrievalHeadResult(model=model, train_seconds=train_seconds, history=history)


@dataclass
class _HeadTrainingData:
    """The checked training arrays of a retrieval head, as float tensors (pairs as an integer array)."""

    queries: torch.Tensor
    documents: torch.Tensor
    old_documents: torch.Tensor
    old_queries: torch.Tensor | None
    pairs: np.ndarray
    unlabelled: torch.Tensor | None
    unlabelled_old: torch.Tensor | None

    @property
    def hidden(self) -> int:
        return self.queries.shape[1]

    @property
    def old_dim(self) -> int:
        return self.old_documents.shape[1]

    @classmethod
    def checked(cls, query_features, document_features, old_document_embeddings, pairs, old_query_embeddings,
                unlabelled_features, unlabelled_old_embeddings) -> _HeadTrainingData:  # fmt: skip
        """Every array checked for shape, width and finiteness, and the rows of paired arrays for agreement."""
        queries = _as_rows(query_features, "query_features")
        hidden = queries.shape[1]
        documents = _as_rows(document_features, "document_features", hidden)
        old_documents = _as_rows(old_document_embeddings, "old_document_embeddings")
        old_dim = old_documents.shape[1]
        if len(old_documents) != len(documents):
            raise BT2InputError(f"old_document_embeddings has {len(old_documents)} rows but document_features has "
                                f"{len(documents)}: row j of both must be the same document.")  # fmt: skip
        old_queries = None
        if old_query_embeddings is not None:
            old_queries = _as_rows(old_query_embeddings, "old_query_embeddings", old_dim)
            if len(old_queries) != len(queries):
                raise BT2InputError(f"old_query_embeddings has {len(old_queries)} rows but query_features has "
                                    f"{len(queries)}: row i of both must be the same query.")  # fmt: skip
        pairs = _as_pairs(pairs, len(queries), len(documents))
        if (unlabelled_features is None) != (unlabelled_old_embeddings is None):
            raise BT2InputError(
                "Give both unlabelled_features and unlabelled_old_embeddings (the same texts), or neither."
            )
        unlabelled = unlabelled_old = None
        if unlabelled_features is not None:
            unlabelled = _as_rows(unlabelled_features, "unlabelled_features", hidden)
            unlabelled_old = _as_rows(unlabelled_old_embeddings, "unlabelled_old_embeddings", old_dim)
            if len(unlabelled) != len(unlabelled_old):
                raise BT2InputError(f"unlabelled_old_embeddings has {len(unlabelled_old)} rows but "
                                    f"unlabelled_features has {len(unlabelled)}: row i of both must be the same "
                                    "text.")  # fmt: skip
        return cls(queries, documents, old_documents, old_queries, pairs, unlabelled, unlabelled_old)


def _optimise_head(
    model: BT2Model, config: RetrievalHeadConfig, data: _HeadTrainingData, steps: int, batch_size: int,
    learning_rate: float, weight_decay: float, warmup_steps: int, seed: int, log_every: int,
) -> list[dict[str, float]]:  # fmt: skip
    """The optimisation loop: AdamW on the head with a linear warm-up then cosine to 0, batches of pairs drawn without
    replacement epoch after epoch; returns the loss history (every ``log_every`` steps, the first and the last)."""
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=learning_rate, weight_decay=weight_decay)

    def rate(step: int) -> float:  # linear warm-up, then cosine to 0 (the trainer's schedule)
        if step < warmup_steps:
            return step / warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    pairs, unlabelled = data.pairs, data.unlabelled
    relevant_in = _relevance_lookup(pairs, len(data.documents))
    order_generator = np.random.default_rng(seed)
    order, cursor = order_generator.permutation(len(pairs)), 0
    history: list[dict[str, float]] = []
    for step in range(steps):
        if cursor + batch_size > len(pairs):
            order, cursor = order_generator.permutation(len(pairs)), 0
        batch = pairs[order[cursor : cursor + batch_size]]
        cursor += batch_size
        query_rows, document_rows = torch.from_numpy(batch[:, 0]), torch.from_numpy(batch[:, 1])
        inputs = [data.queries[query_rows], data.documents[document_rows]]
        if unlabelled is not None:
            unlabelled_rows = torch.from_numpy(
                order_generator.choice(len(unlabelled), min(batch_size, len(unlabelled)), replace=False)
            )
            inputs.append(unlabelled[unlabelled_rows])
        # One head call for every row: the orthogonal maps are computed once per step.
        everything = model(backbone_output=torch.cat(inputs))
        query_out, document_out, *unlabelled_out = (
            type(everything)(**{k: v[start : start + len(rows)] for k, v in everything.items() if v is not None})
            for start, rows in zip(np.cumsum([0] + [len(rows) for rows in inputs[:-1]]), inputs)
        )
        terms = retrieval_head_losses(config, query_out, document_out, data.old_documents[document_rows],
                                      None if data.old_queries is None else data.old_queries[query_rows],
                                      relevant_in(batch))  # fmt: skip
        if unlabelled_out:
            terms |= unlabelled_match_losses(config, unlabelled_out[0], data.unlabelled_old[unlabelled_rows])
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(f"{name} is {value.item()} at step {step} of the {config.method} head; "
                                         "lower learning_rate or check the features.")  # fmt: skip
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == 0 or (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, "loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0]}
            history.append(entry | {name: value.item() for name, value in terms.items()})
    return history


@torch.no_grad()
def encoder_features(
    model: BT2Model, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
) -> np.ndarray:
    """The frozen encoder's pooled output for each text: what :func:`train_retrieval_head` caches.

    Tokenised with the model's own tokenizer (truncated to its maximum length), in eval mode.

    Args:
        model (:class:`~bt2_hf.BT2Model`): a text model (any head; only its backbone runs).
        texts (`list[str]`): the texts.
        batch_size (`int`, *optional*, defaults to 64): texts per forward pass.
        show_progress (`bool`, *optional*, defaults to `False`): a progress bar.

    Returns:
        `np.ndarray` of shape `(len(texts), hidden)`, float32.
    """
    from tqdm.auto import tqdm

    if model.modality != "text" or model.processor is None:
        raise ValueError("encoder_features needs a text model with its tokenizer (model.processor).")
    texts = list(texts)
    was_training = model.backbone.training
    model.backbone.eval()
    parts = []
    for start in tqdm(range(0, len(texts), batch_size), desc="features", disable=not show_progress):
        tokens = model.processor(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(model.device) for k, v in tokens.items()}
        parts.append(model.backbone(**tokens).float().cpu())
    model.backbone.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.backbone.hidden_size), np.float32)


@torch.no_grad()
def head_embeddings(
    model: BT2Model, features: Any, prefix_dim: int | None = None, batch_size: int = 4096
) -> np.ndarray:
    """The model's embeddings of texts from their cached encoder features (the head only): what ``model.encode``
    returns for those texts.

    Args:
        model (:class:`~bt2_hf.BT2Model`): the model whose backbone made the features.
        features (array of shape `(n, hidden)`): :func:`encoder_features` of the texts.
        prefix_dim (`int`, *optional*): keep the first ``prefix_dim`` dims and re-normalise (e.g.
            ``config.compatible_dim`` to search the old gallery).
        batch_size (`int`, *optional*, defaults to 4096): rows per head call.

    Returns:
        `np.ndarray` of shape `(n, embedding_dim or prefix_dim)`, float32, unit rows.
    """
    features = _as_rows(features, "features", model.backbone.hidden_size)
    model.eval()
    parts = []
    for start in range(0, len(features), batch_size):
        embeddings = model(backbone_output=features[start : start + batch_size]).embeddings
        if prefix_dim is not None:
            embeddings = torch.nn.functional.normalize(embeddings[:, :prefix_dim], dim=-1)
        parts.append(embeddings)
    return torch.cat(parts).numpy()
