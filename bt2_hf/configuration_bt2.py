"""``BT2Config``: the architecture (backbone + head) and the compatibility metadata of one embedding model."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .backbones import get_backbone_class
from .heads import get_head_class

NONLINEARITIES = ("relu", "none")


class BT2Config(PreTrainedConfig):
    r"""Configuration of a :class:`~bt2_hf.BT2Model`: one backbone, one embedding head, and what it is compatible with.

    One class serves every model of a backward-compatible update: the old model, an independently trained new model
    and a BCT model use ``head_type="linear"``; a BT² model uses ``head_type="basis_transformation"``.

    Args:
        backbone_type (`str`, *optional*, defaults to `"small_cnn"`): a registered backbone
            (``bt2_hf.backbones.list_backbones()``): ``small_cnn``, ``hf_vision``, ``hf_text``, ``open_clip_vision``,
            ``open_clip_text``.
        backbone_config (`dict`, *optional*): the backbone's own config; for transformers backbones the ``to_dict()``
            of a transformers config (with its ``model_type``).
        pooling (`str`, *optional*, defaults to `"default"`): how the backbone pools (``cls``, ``mean``, ``pooler``).
        head_type (`str`, *optional*, defaults to `"linear"`): a registered head (``bt2_hf.heads.list_heads()``):
            ``"linear"`` or ``"basis_transformation"`` (BT²), or one added with :func:`bt2_hf.heads.register_head`.
        head_config (`dict`, *optional*): settings of a head beyond the width fields below (the built-in heads have
            none); its class reads them in ``widths`` and ``from_config``.
        embedding_dim (`int`, *optional*, defaults to 128): output width of a linear head. For a BT² head it is
            derived as ``feature_dim + extra_dim``.
        compatible_dim (`int`, *optional*): length of the embedding prefix that is compatible with an older model.
            Defaults to ``embedding_dim`` (linear) or ``old_embedding_dim`` (BT²).
        feature_dim (`int`, *optional*, defaults to 128): BT² only: ``D``, the new model's own feature width.
        old_embedding_dim (`int`, *optional*): BT² only: ``D_old``, the old model's embedding width.
        extra_dim (`int`, *optional*, defaults to 32): BT² only: ``k``, the added dimensions.
        feature_scale (`float`, *optional*, defaults to 2.0): BT² only: ``C``, the weight of the new feature against
            the added branch.
        head_nonlinearity (`str`, *optional*): ``"relu"`` or ``"none"`` before normalising; defaults to ``"relu"`` for
            BT² (the research code's post-ReLU features) and ``"none"`` for linear heads. The training loop
            (:func:`bt2_hf.training.train`, ``bt2 train``) does not rely on this default for BT²: unless
            ``head_nonlinearity`` is given, a BT² model gets its independent model's nonlinearity, so that ``f`` can
            match that embedding.
        num_classes (`int`, *optional*, defaults to 0): width of the training classifier (0: none).
        logit_scale (`float`, *optional*, defaults to 1.0): fixed factor on the classifier's logits. The classifier
            sees unit-norm features, so with a scale of 1 its logits grow only as fast as its weights do; the research
            code uses 1 (and 100 epochs); a cosine-classifier scale such as 16 trains short schedules much faster.
            It changes only the training classifier, never the embeddings.
        normalize (`bool`, *optional*, defaults to `True`): embeddings are L2-normalised (always true for bt2_hf models).
        similarity (`str`, *optional*, defaults to `"cosine"`): the similarity the embeddings are meant for.
        fingerprint (`str`, *optional*): sha256 of the saved weights, written by ``save_pretrained``.
        compatible_with (`list[dict]`, *optional*): older models whose galleries this model may query, each with
            ``name_or_path``, ``revision``, ``fingerprint``, ``embedding_dim`` (the prefix length to use), ``method``
            and optionally measured ``metrics``.
        training (`dict`, *optional*): how the model was trained (method, method config, class subset, references).
        base_model (`str`, *optional*): the checkpoint the backbone was initialised from, if any.

    Example:

    ```python
    >>> from bt2_hf import BT2Config
    >>> config = BT2Config(head_type="basis_transformation", feature_dim=64, old_embedding_dim=64, extra_dim=16)
    >>> config.embedding_dim, config.compatible_dim
    (80, 64)
    ```
    """

    model_type = "bt2_hf_encoder"

    def __init__(
        self,
        backbone_type: str = "small_cnn",
        backbone_config: dict[str, Any] | None = None,
        pooling: str = "default",
        head_type: str = "linear",
        head_config: dict[str, Any] | None = None,
        embedding_dim: int | None = None,
        compatible_dim: int | None = None,
        feature_dim: int = 128,
        old_embedding_dim: int | None = None,
        extra_dim: int = 32,
        feature_scale: float = 2.0,
        head_nonlinearity: str | None = None,
        num_classes: int = 0,
        logit_scale: float = 1.0,
        normalize: bool = True,
        similarity: str = "cosine",
        fingerprint: str | None = None,
        compatible_with: list[dict[str, Any]] | None = None,
        training: dict[str, Any] | None = None,
        base_model: str | None = None,
        **kwargs: Any,
    ):
        backbone_class = get_backbone_class(backbone_type)  # raises on an unknown name
        if pooling not in backbone_class.poolings:
            raise ValueError(
                f"Backbone {backbone_type!r} does not support pooling={pooling!r}; choose one of "
                f"{list(backbone_class.poolings)}."
            )
        head_class = get_head_class(head_type)  # raises on an unknown name, listing the registered heads
        if head_nonlinearity is None:
            head_nonlinearity = head_class.default_nonlinearity
        if head_nonlinearity not in NONLINEARITIES:
            raise ValueError(f"Unknown head_nonlinearity {head_nonlinearity!r}; choose one of {list(NONLINEARITIES)}.")
        if not normalize:
            raise ValueError(
                "bt2_hf embeddings are always L2-normalised (normalize=True); the contract depends on it."
            )
        if similarity != "cosine":
            raise ValueError(f"Only similarity='cosine' is supported, got {similarity!r}.")
        head_config = dict(head_config or {})
        embedding_dim, compatible_dim = head_class.widths(
            {"embedding_dim": embedding_dim, "compatible_dim": compatible_dim, "feature_dim": feature_dim,
             "old_embedding_dim": old_embedding_dim, "extra_dim": extra_dim, **head_config}
        )  # fmt: skip
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}.")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}.")

        self.backbone_type = backbone_type
        self.backbone_config = dict(backbone_config or {})
        self.pooling = pooling
        self.head_type = head_type
        self.head_config = head_config
        self.embedding_dim = int(embedding_dim)
        self.compatible_dim = int(compatible_dim)
        self.feature_dim = int(feature_dim)
        self.old_embedding_dim = old_embedding_dim
        self.extra_dim = int(extra_dim)
        self.feature_scale = float(feature_scale)
        self.head_nonlinearity = head_nonlinearity
        self.num_classes = int(num_classes)
        self.logit_scale = float(logit_scale)
        self.normalize = normalize
        self.similarity = similarity
        self.fingerprint = fingerprint
        self.compatible_with = list(compatible_with or [])
        self.training = dict(training or {})
        self.base_model = base_model
        super().__init__(**kwargs)
        from .compatibility import validate_compatibility_metadata

        validate_compatibility_metadata(self)

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``: what the backbone encodes."""
        return get_backbone_class(self.backbone_type).modality

    @property
    def projection_dim(self) -> int:
        """The embedding width, under the name sentence-transformers reads for models that output embeddings."""
        return self.embedding_dim
