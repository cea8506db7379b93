"""Loss functions of backward-compatible training, as pure functions of tensors.

Every function computes in float32 (whatever the autocast dtype of its inputs) because the influence logits lie in
[-1, 1] and the matching losses are differences of numbers close to 1: half precision would lose them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the model's own classifier.

    Args:
        logits (`torch.Tensor` of shape `(batch, num_classes)`): classifier outputs.
        labels (`torch.LongTensor` of shape `(batch,)`): class ids.
        label_smoothing (`float`, *optional*, defaults to 0.0): label smoothing of the cross-entropy.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def prototype_logits(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Scores of embeddings against fixed class prototypes ``W_o``: ``embeddings[:, :d_old] · W_oᵀ``.

    Only the first ``d_old`` dimensions of a wider embedding enter: this is BCT's zero-padded ``W_o`` (bt2-method §2),
    so the extra dimensions are left unconstrained. There is no temperature: the scores lie in [-1, 1] for unit
    inputs, which is why the influence weight is large (10).

    Args:
        embeddings (`torch.Tensor` of shape `(batch, dim)` with `dim >= d_old`): the new model's embeddings.
        prototypes (`torch.Tensor` of shape `(num_classes, d_old)`): the fixed pseudo-classifier.

    Returns:
        `torch.Tensor` of shape `(batch, num_classes)`, float32.
    """
    old_dim = prototypes.shape[1]
    if embeddings.shape[1] < old_dim:
        raise ValueError(
            f"The embeddings have {embeddings.shape[1]} dimensions but the prototypes have {old_dim}: the new "
            "embedding must be at least as wide as the old one."
        )
    return embeddings[:, :old_dim].float() @ prototypes.float().T


def influence_loss(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """BCT's influence loss: cross-entropy of :func:`prototype_logits` (Shen et al. 2020; bt2-method §1.4, §2).

    Args:
        embeddings (`torch.Tensor` of shape `(batch, dim)`): the (old-compatible) embeddings.
        prototypes (`torch.Tensor` of shape `(num_classes, d_old)`): the fixed pseudo-classifier ``W_o``.
        labels (`torch.LongTensor` of shape `(batch,)`): class ids.
        label_smoothing (`float`, *optional*, defaults to 0.0): label smoothing of the cross-entropy.
        scale (`float`, *optional*, defaults to 1.0): factor on the logits (an inverse temperature). Unit
            embeddings against class means give logits within [-1, 1], an almost uniform softmax; the research code
            uses 1, a larger scale sharpens the pull towards the right prototype.
    """
    logits = prototype_logits(embeddings, prototypes)
    return F.cross_entropy(scale * logits, labels, label_smoothing=label_smoothing)


def cosine_matching_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 − mean_i cos(predictions_i, targets_i)``: pulls each embedding towards its reference embedding.

    Both sides are L2-normalised here, so the loss is a pure angle whatever the inputs' norms.

    Args:
        predictions (`torch.Tensor` of shape `(batch, dim)`): the trained model's vectors.
        targets (`torch.Tensor` of shape `(batch, dim)`): the frozen reference's embeddings of the same inputs.
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            f"Cannot match embeddings of shape {tuple(predictions.shape)} to targets of shape {tuple(targets.shape)}."
        )
    cosine = (F.normalize(predictions.float(), dim=-1) * F.normalize(targets.float(), dim=-1)).sum(dim=-1)
    return 1.0 - cosine.mean()


def _check_contrastive_inputs(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> None:
    """The contrastive losses' shared checks: pairs of one shape, a positive temperature."""
    if queries.shape != keys.shape:
        raise ValueError(
            f"Contrastive pairs need queries and keys of one shape, got {tuple(queries.shape)} and {tuple(keys.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")


def contrastive_loss(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05, symmetric: bool = True
) -> torch.Tensor:
    r"""In-batch contrastive loss (InfoNCE, as CLIP): each query must pick its own key among the batch's keys.

    With ``q̂_i``, ``k̂_j`` the L2-normalised rows and ``s_ij = q̂_i · k̂_j / temperature``:

    ``L = ½ [ mean_i −log softmax_j(s_ij)[i]  +  mean_j −log softmax_i(s_ij)[j] ]``

    (the second, key→query half only when ``symmetric``). Row ``i`` of ``queries`` and of ``keys`` are a pair (a
    caption and its image); every other row of the batch is a negative. This is what makes an embedding
    *discriminate instances*: a cosine match to its own target alone leaves two captions of similar images free to
    collapse onto one point.

    In a multi-process run the batch is the **global** batch: every process's rows are gathered (with gradients, see
    :func:`bt2_hf.utils.distributed.gather_with_grad`) and each process scores its own rows against all of them, so
    2 processes × B rows train exactly as 1 process × 2B rows.

    Args:
        queries (`torch.Tensor` of shape `(batch, dim)`): e.g. the text tower's embeddings.
        keys (`torch.Tensor` of shape `(batch, dim)`): their partners, e.g. the paired images' embeddings (a frozen
            target or another trained tower).
        temperature (`float`, *optional*, defaults to 0.05): divides the cosines (CLIP learns it and ends near 0.01;
            a fixed value keeps runs reproducible).
        symmetric (`bool`, *optional*, defaults to `True`): average with the key→query direction.

    Returns:
        `torch.Tensor`: the scalar loss, float32.
    """
    from .utils.distributed import gather_with_grad

    _check_contrastive_inputs(queries, keys, temperature)
    queries = F.normalize(queries.float(), dim=-1)
    keys = F.normalize(keys.float(), dim=-1)
    all_queries, offset = gather_with_grad(queries)
    all_keys, _ = gather_with_grad(keys)
    own = torch.arange(offset, offset + len(queries), device=queries.device)
    loss = F.cross_entropy(queries @ all_keys.T / temperature, own)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(keys @ all_queries.T / temperature, own))
    return loss


def relevance_masked_contrastive_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    relevant: torch.Tensor | None = None,
    temperature: float = 0.05,
    symmetric: bool = True,
) -> torch.Tensor:
    r"""In-batch InfoNCE for query → document retrieval, where a batch may hold more than one relevant pair.

    As :func:`contrastive_loss` (row ``i`` of ``queries`` and of ``keys`` are a pair, every other row is a negative),
    except that the pairs ``relevant[i, j]`` with ``i ≠ j`` (key ``j`` is *also* relevant to query ``i``: a query with
    two relevant documents, or two queries sharing one) are left out of the softmax instead of being pushed apart. In
    the key → query half, the same mask is read transposed. Single-process only (no gathering across processes): it
    is meant for heads trained on cached features in one process.

    Args:
        queries (`torch.Tensor` of shape `(batch, dim)`): e.g. the queries' embeddings.
        keys (`torch.Tensor` of shape `(batch, dim)`): their paired documents' embeddings (trained, or a frozen old
            gallery's rows).
        relevant (`torch.BoolTensor` of shape `(batch, batch)`, *optional*): ``relevant[i, j]``: key ``j`` is relevant to
            query ``i``. The diagonal is the pairs themselves (read as relevant whatever it holds). ``None``: only
            the diagonal.
        temperature (`float`, *optional*, defaults to 0.05): divides the cosines.
        symmetric (`bool`, *optional*, defaults to `True`): average with the key → query direction.

    Returns:
        `torch.Tensor`: the scalar loss, float32.
    """
    _check_contrastive_inputs(queries, keys, temperature)
    batch = len(queries)
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    own = torch.arange(batch, device=queries.device)
    if relevant is not None:
        if relevant.shape != (batch, batch):
            raise ValueError(f"relevant must have shape {(batch, batch)}, got {tuple(relevant.shape)}.")
        others = relevant.to(device=scores.device, dtype=torch.bool) & ~torch.eye(
            batch, dtype=torch.bool, device=scores.device
        )
        # -inf leaves a relevant non-pair out of the softmax; the diagonal always stays, so no row is all -inf.
        scores = scores.masked_fill(others, float("-inf"))
    loss = F.cross_entropy(scores, own)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(scores.T, own))
    return loss


def class_contrastive_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    key_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Supervised contrastive loss: each query must rank the keys of its own class above the others.

    With ``s_ij = q̂_i · k̂_j / temperature``, ``L = mean_i −log(Σ_{j: y_j = y_i} e^{s_ij} / Σ_j e^{s_ij})``: a
    soft nearest-neighbour classifier of the query among the keys (NCA). With ``keys`` the frozen old model's
    embeddings (of the batch, or of the whole training set as a memory bank), it trains what retrieval in the old
    gallery rewards (a new query nearer the old embeddings of its class than of any other), where a cosine match to the
    query's own old embedding copies the old model's mistakes too.

    Args:
        queries (`torch.Tensor` of shape `(batch, dim)`): e.g. the compatible block of the new model.
        keys (`torch.Tensor` of shape `(num_keys, dim)`): e.g. the old model's embeddings of the same rows, or of every
            training row.
        labels (`torch.LongTensor` of shape `(batch,)`): the queries' classes.
        temperature (`float`, *optional*, defaults to 0.1): divides the cosines.
        key_labels (`torch.LongTensor` of shape `(num_keys,)`, *optional*): the keys' classes; defaults to ``labels``
            (the keys are the queries' own rows, so row ``i``'s own key is always a positive). Every query needs at
            least one key of its class.

    Returns:
        `torch.Tensor`: the scalar loss, float32.
    """
    key_labels = labels if key_labels is None else key_labels
    if key_labels is labels:
        _check_contrastive_inputs(queries, keys, temperature)
    elif len(key_labels) != len(keys) or queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"keys {tuple(keys.shape)} need one label each (got {len(key_labels)}) and the queries' "
                         f"width {queries.shape[-1]}.")  # fmt: skip
    elif temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    positive = labels.reshape(-1, 1) == key_labels.reshape(1, -1)
    log_all = torch.logsumexp(scores, dim=1)
    log_positive = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_positive).mean()
