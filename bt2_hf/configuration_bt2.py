"""``BT2Config``: the architecture (backbone + head) and the compatibility metadata of one embedding model."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .backbones import get_backbone_class
from .heads import get_head_class

ADAPTER_BLOCK_KEYS = ("kind", "config", "base_model", "target_model", "fitted_on")
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
        adapter (`dict`, *optional*): a post-hoc adapter applied after the head (:mod:`bt2_hf.adapters`): the model
            is then an *adapted query model*, whose embeddings are the adapter's output in an old model's space.
            ``{"kind", "config"`` (the adapter's ``config_dict()``: kind, ``input_dim`` = the head's width,
            ``output_dim`` = the old model's width, hyper-parameters)``, "base_model"`` (the new model it adapts:
            ``name_or_path``, ``fingerprint``, ``embedding_dim``, ``compatible_dim``)``, "target_model"`` (the old
            model: ``name_or_path``, ``fingerprint``, ``embedding_dim``)``, "fitted_on"`` (``name``, ``split``,
            ``num_pairs``, ``sha256``)``}``, written by :func:`bt2_hf.adapt.attach_adapter`. ``embedding_dim`` and
            ``compatible_dim`` are then the adapter's ``output_dim``; the head keeps the base model's widths
            (:attr:`head_embedding_dim`).

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
        adapter: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        adapter = validated_adapter_block(adapter) if adapter is not None else None
        if adapter is not None:
            # Saved: embedding_dim = compatible_dim = the adapter's output; the head's widths come from the block.
            output_dim = adapter["config"]["output_dim"]
            for name, value in (("embedding_dim", embedding_dim), ("compatible_dim", compatible_dim)):
                if value is not None and value != output_dim:
                    raise ValueError(
                        f"With an adapter, {name} is the adapter's output_dim ({output_dim}); got {name}={value}."
                    )
            # the head's own widths, checked by the head's widths() below like any head's
            embedding_dim = adapter["config"]["input_dim"]
            compatible_dim = adapter["base_model"].get("compatible_dim")
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
        if adapter is not None and embedding_dim != adapter["config"]["input_dim"]:
            raise ValueError(
                f"The adapter maps {adapter['config']['input_dim']}-d embeddings but this head outputs {embedding_dim}-d "
                "ones: the adapter was fitted on another model. Fit it again on this model's embeddings (bt2 adapt)."
            )
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
        self.adapter = adapter
        if adapter is not None:
            self.embedding_dim = self.compatible_dim = int(adapter["config"]["output_dim"])
        super().__init__(**kwargs)
        from .compatibility import validate_compatibility_metadata

        validate_compatibility_metadata(self)

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``: what the backbone encodes."""
        return get_backbone_class(self.backbone_type).modality

    @property
    def head_embedding_dim(self) -> int:
        """The head's output width: ``embedding_dim``, or with an adapter the base model's width (its input)."""
        return int(self.adapter["config"]["input_dim"]) if self.adapter else self.embedding_dim

    @property
    def head_compatible_dim(self) -> int:
        """The head's compatible prefix: ``compatible_dim``, or with an adapter the base model's."""
        if not self.adapter:
            return self.compatible_dim
        return int(self.adapter["base_model"].get("compatible_dim") or self.head_embedding_dim)

    @property
    def projection_dim(self) -> int:
        """The embedding width, under the name sentence-transformers reads for models that output embeddings."""
        return self.embedding_dim


def validated_adapter_block(block: Any) -> dict[str, Any]:
    """``config.adapter`` checked: a dict with :data:`ADAPTER_BLOCK_KEYS`, a registered kind whose ``config`` names the
    same kind and positive integer widths, and the base and target models' fingerprints.

    Raises:
        `ValueError`: naming the key that is missing or wrong.
    """
    from .adapters import ADAPTERS

    if not isinstance(block, dict):
        raise ValueError(
            f"config.adapter must be a dict with keys {list(ADAPTER_BLOCK_KEYS)}; got {type(block).__name__}."
        )
    missing = [key for key in ("kind", "config", "base_model", "target_model") if not block.get(key)]
    if missing:
        raise ValueError(
            f"config.adapter lacks {missing}; it needs {list(ADAPTER_BLOCK_KEYS)}. Adapted models are written by "
            "`bt2 adapt` (bt2_hf.adapt.attach_adapter)."
        )
    unknown = sorted(set(block) - set(ADAPTER_BLOCK_KEYS))
    if unknown:
        raise ValueError(f"config.adapter has unknown keys {unknown}; expected {list(ADAPTER_BLOCK_KEYS)}.")
    kind, adapter_config = block["kind"], block["config"]
    if kind not in ADAPTERS:
        raise ValueError(f"config.adapter has kind {kind!r}; registered kinds: {sorted(ADAPTERS)}.")
    if not isinstance(adapter_config, dict) or adapter_config.get("kind") != kind:
        raise ValueError(f"config.adapter.config must be the {kind!r} adapter's config_dict() (with kind={kind!r}).")
    for name in ("input_dim", "output_dim"):
        value = adapter_config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.adapter.config.{name} must be a positive int; got {value!r}.")
    for role in ("base_model", "target_model"):
        if not isinstance(block[role], dict) or not block[role].get("fingerprint"):
            raise ValueError(f"config.adapter.{role} must record the model's fingerprint; got {block[role]!r}.")
    if block["base_model"].get("embedding_dim") not in (None, adapter_config["input_dim"]):
        raise ValueError(
            f"config.adapter maps {adapter_config['input_dim']}-d embeddings but its base model embeds "
            f"{block['base_model']['embedding_dim']}-d ones: the adapter was fitted on another model. Fit it again on "
            "this model's embeddings (bt2 adapt)."
        )
    if block["target_model"].get("embedding_dim") not in (None, adapter_config["output_dim"]):
        raise ValueError(
            f"config.adapter maps into {adapter_config['output_dim']} dims but its target model is "
            f"{block['target_model']['embedding_dim']}-d."
        )
    return {key: block[key] for key in ADAPTER_BLOCK_KEYS if key in block}
