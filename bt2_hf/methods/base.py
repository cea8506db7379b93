"""Base classes of a compatibility method: a config dataclass and the hooks the training loop calls."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class MethodConfig:
    """Base of every method's configuration. Subclasses add fields with ``metadata={"help": ...}``.

    Args:
        label_smoothing (`float`, *optional*, defaults to 0.1): label smoothing of the classification loss.
    """

    label_smoothing: float = field(
        default=0.1, metadata={"help": "Label smoothing of the cross-entropy losses (0 disables it)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_weight") and value < 0:
                raise ValueError(f"{item.name} must be >= 0, got {value}.")
            choices = item.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"{item.name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (stored in ``config.training["method_config"]``)."""
        return dataclasses.asdict(self)


@dataclass
class PrototypeInfluenceConfig(MethodConfig):
    """Base of the methods with BCT's influence loss through the old model's class prototypes (BCT, BT²).

    Args:
        influence_scale (`float`, *optional*, defaults to 1.0): inverse temperature of the influence logits (the
            research code: 1).
        influence_weight (`float`, *optional*, defaults to 10.0): weight of the influence loss (BCT's α, BT²'s λ2).
    """

    influence_scale: float = field(
        default=1.0,
        metadata={
            "help": "Inverse temperature of the influence loss's logits (1: the research code; larger values pull "
            "harder towards the right old prototype)."
        },
    )
    influence_weight: float = field(
        default=10.0,
        metadata={"help": "Weight of the influence loss through the old model's class prototypes W_o."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.influence_scale <= 0:
            raise ValueError(f"influence_scale must be positive, got {self.influence_scale}.")


class CompatibilityMethod:
    """A way of training a model: which references it needs, which head it builds, and its losses.

    Subclasses set the class attributes and implement :meth:`compute_loss`; they are registered with
    :func:`bt2_hf.methods.register_method`.

    Attributes:
        name (`str`): registry name (``"independent"``, ``"bct"``, ``"bt2"``).
        config_class (`type[MethodConfig]`): the method's config dataclass.
        modality (`str`): what it trains: ``"image"`` (an image tower on image–label data), ``"text"`` (a text tower
            on image–text data) or ``"pair"`` (a text and an image tower together, see
            :class:`~bt2_hf.training.towers.BT2PairOutput`).
        requires (`tuple[str, ...]`): the frozen reference models it needs, by role: ``"old"`` (the old *image*
            model; embeds the image of each row), ``"independent"`` (the independently trained new model of the same
            modality; for a pair, its two towers ``"independent_image"`` and ``"independent_text"``), ``"image"``
            (the image model a text tower is aligned with).
        uses_prototypes (`bool`): whether it uses the fixed class-mean pseudo-classifier ``W_o`` (class means of the
            ``prototype_reference`` model's embeddings of the training images).
        prototype_reference (`str`): the reference whose class means form ``W_o`` (default ``"old"``).
        requires_labels (`bool`): whether the data must have class labels. Methods that do not require them use the
            label terms (classifier, influence) only when the data has labels (``labels`` is then not ``None``).
        paper (`dict`): ``title``, ``arxiv_id``, ``url`` and ``citation`` (bibtex), for model cards.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    modality: ClassVar[str] = "image"
    requires: ClassVar[tuple[str, ...]] = ()
    uses_prototypes: ClassVar[bool] = False
    prototype_reference: ClassVar[str] = "old"
    requires_labels: ClassVar[bool] = True
    paper: ClassVar[dict[str, str]] = {}

    def __init__(self, config: MethodConfig | None = None):
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"Method {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.prototypes: torch.Tensor | None = None

    def build_config_overrides(self, reference_dims: dict[str, int], embedding_dim: int | None) -> dict[str, Any]:
        """The :class:`~bt2_hf.BT2Config` head fields this method needs, given the references' widths.

        Args:
            reference_dims (`dict[str, int]`): embedding width of each loaded reference (``"old"``, ``"independent"``).
            embedding_dim (`int`, *optional*): the width the user asked for (linear heads); ``None`` for the default.

        Returns:
            `dict`: keyword arguments for ``BT2Config`` (``head_type``, ``embedding_dim``, ``compatible_dim``, …).
        """
        return {"head_type": "linear", "embedding_dim": embedding_dim or 128}

    def target_roles(self) -> tuple[str, ...]:
        """The references whose embeddings :meth:`compute_loss` reads (default: every one in ``requires``).

        A reference left out is still loaded (for its width, or as the weights a fine-tune starts from) but never
        embeds a training image: no stored table, no forward pass per batch.
        """
        return self.requires

    def reads_targets_of(self, reference: str) -> bool:
        """Whether the loss reads the loaded reference ``reference``: one of :meth:`target_roles`, or one tower of it
        (a pair's ``independent_image`` and ``independent_text`` are the ``independent`` role's)."""
        return any(reference == role or reference.startswith(f"{role}_") for role in self.target_roles())

    def prepare(self, prototypes: torch.Tensor | None = None) -> None:
        """Receive what is computed once before training (the prototypes ``W_o``, shape `(num_classes, d_old)`)."""
        if self.uses_prototypes and prototypes is None and self.requires_labels:
            raise ValueError(f"Method {self.name!r} needs the old model's class prototypes; none were given.")
        self.prototypes = prototypes

    def prepare_targets(
        self, precomputed: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The stored reference tables the run will draw its targets from, given once before training.

        The default keeps them as they are. A method whose targets are a function of the whole table (neighbours,
        class statistics) returns new tables here; it must not change the given tensors in place (they may be shared
        with other runs through the feature cache).

        Args:
            precomputed (`dict[str, torch.Tensor]`): stored targets by role, one row per training row.
            labels (`torch.LongTensor` of shape `(N,)`, *optional*): the training rows' classes; ``None`` without labels.

        Returns:
            `dict[str, torch.Tensor]`: the tables :meth:`batch_targets` receives.
        """
        return precomputed

    def batch_targets(
        self,
        references: dict[str, Any],
        precomputed: dict[str, torch.Tensor],
        images: torch.Tensor,
        rows: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The frozen references' embeddings of one batch (the ``targets`` that :meth:`compute_loss` receives).

        The default: the rows of a table the trainer stored once (``precomputed``: a given old-target column, a text
        reference's caption embeddings, or image targets with ``reference_targets="precomputed"``), else the image
        reference's embedding of the batch's augmented images, or the text reference's embedding of the rows'
        captions. A method that needs other targets (another view, a mixture of references) overrides this hook.

        Args:
            references (`dict[str, FrozenReference]`): the loaded frozen references, by role.
            precomputed (`dict[str, torch.Tensor]`): stored targets by role, one row per training row.
            images (`torch.Tensor` of shape `(batch, C, H, W)`): the batch's augmented images, float in [0, 1].
            rows (`torch.LongTensor` of shape `(batch,)`): the batch's row indices into the training data.

        Returns:
            `dict[str, torch.Tensor]`: one `(batch, d)` tensor per reference role.
        """
        targets = {}
        for name, ref in references.items():
            if not self.reads_targets_of(name):
                continue
            if name in precomputed:
                targets[name] = precomputed[name][rows.to(precomputed[name].device)]
            elif ref.modality == "image":
                targets[name] = ref.embed(images)
            else:
                targets[name] = ref.embed_rows(rows)
        return targets

    def compute_loss(
        self, outputs: Any, targets: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The named loss terms of one batch; the trainer sums those whose key ends in ``_loss``.

        The one signature of every method, whatever it trains (image tower, text tower, image–text pair).

        Args:
            outputs (:class:`~bt2_hf.BT2Output`, or :class:`~bt2_hf.training.towers.BT2PairOutput` for a pair): the
                trained model's outputs.
            targets (`dict[str, torch.Tensor]`): the frozen references' embeddings of the same rows, keyed by role
                (``"old"``: the old image model's embedding of the row's (augmented) image, computed online or
                precomputed; ``"independent"``: the independent model's embedding of the same input, …).
            labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class ids; ``None`` for data without labels
                (only methods with ``requires_labels = False`` are given such data).

        Returns:
            `dict[str, torch.Tensor]` of scalar losses, already multiplied by their weights.
        """
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint records about the method (``config.training``)."""
        return {"method": self.name, "method_config": self.config.to_dict(), "paper": dict(self.paper)}
