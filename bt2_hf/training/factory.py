"""Building the model a run trains: its tower(s) from the method's head fields, the references' widths and the
model arguments, the processor matched to the data, an optional start from the independent model, frozen backbones.

Everything here runs before the training loop writes anything, so a mismatch (widths, backbones, modalities) is
refused with nothing on disk.
"""

from __future__ import annotations

import logging

import torch

from ..configuration_bt2 import BT2Config
from ..data.datasets import ImageClassificationData
from ..methods import CompatibilityMethod
from ..modeling_bt2 import BT2Model
from .arguments import ModelArguments
from .references import FrozenReference
from .towers import BT2PairModel

logger = logging.getLogger(__name__)


def build_model(
    model_args: ModelArguments, method: CompatibilityMethod, references: dict[str, FrozenReference], num_classes: int
) -> BT2Model | BT2PairModel:
    """The model a run trains: one tower (or a pair) with the head the method asks for, given its references' widths.

    Args:
        model_args (:class:`ModelArguments`): backbone, head width, nonlinearity, pretrained start, frozen parts.
        method (:class:`~bt2_hf.methods.CompatibilityMethod`): gives the head fields (``build_config_overrides``).
        references (`dict[str, FrozenReference]`): the loaded frozen references, by role.
        num_classes (`int`): classes of the training data (the classifier's width).

    Returns:
        :class:`~bt2_hf.BT2Model` (a :class:`~bt2_hf.training.BT2PairModel` for a pair method).
    """
    dims = {name: ref.embedding_dim for name, ref in references.items()}
    if model_args.old_embedding_dim is not None and "old" in dims and dims["old"] != model_args.old_embedding_dim:
        raise ValueError(
            f"The old model {references['old'].name_or_path} has {dims['old']}-d embeddings, but old_embedding_dim="
            f"{model_args.old_embedding_dim} was asked for. Pass the old checkpoint of that width, or fix "
            "old_embedding_dim."
        )
    overrides = method.build_config_overrides(dims, model_args.embedding_dim)
    if method.modality == "pair":
        return build_pair(model_args, overrides, num_classes)
    if model_args.head_nonlinearity is not None:
        overrides["head_nonlinearity"] = model_args.head_nonlinearity
    elif "independent" in references and overrides.get("head_type") == "basis_transformation":
        # BT² matches its feature f to the independent model's embedding: f must be able to take the same signs,
        # so it inherits the independent head's nonlinearity (a ReLU'd f cannot match a signed embedding).
        overrides["head_nonlinearity"] = references["independent"].model.config.head_nonlinearity
    kwargs = dict(pooling=model_args.pooling, num_classes=num_classes, logit_scale=model_args.logit_scale, **overrides)
    model = new_tower(model_args.backbone_type, model_args.backbone_config, model_args.init_from, kwargs)
    if model.modality != method.modality:
        raise ValueError(
            f"Method {method.name!r} trains a {method.modality} tower, but backbone {model_args.backbone_type!r} "
            f"encodes {model.modality}; choose a {method.modality} backbone_type."
        )
    finish_tower(model, model_args)
    if model_args.init_from_independent:
        if "independent" in references:
            independent = references["independent"].model
        elif model_args.independent_model:  # BCT: needed only as the starting point
            independent = BT2Model.from_pretrained(
                model_args.independent_model, revision=model_args.independent_model_revision
            )
        else:
            raise ValueError(
                "init_from_independent needs the independent model to start from: pass independent_model."
            )
        start_from_independent(model, independent)
    return model


def match_processor_to_data(model: BT2Model, data: ImageClassificationData, model_args: ModelArguments) -> None:
    """Make the processor saved with the model describe the training data's size.

    A size-agnostic backbone (``small_cnn``) whose ``image_size`` was not given takes the data's size, so a 32×32
    data set saves a 32×32 processor (not the 28×28 default). Any other mismatch means training resizes every image
    to the processor's size (e.g. 32×32 photos up to a ViT's 224×224): that is said in the log, never silent.
    """
    sample = data.images[0] if data.images is not None else data.dataset[0]
    data_size = tuple(int(s) for s in sample.shape[-2:])
    processor = model.processor
    if processor.image_size == data_size:
        return
    given = (model_args.backbone_config or {}).get("image_size")
    if type(model.backbone).size_agnostic and given is None:
        model.processor = type(processor).from_dict({**processor.to_dict(), "size": list(data_size)})
        model.config.backbone_config["image_size"] = list(data_size)
        logger.info(
            "The processor takes the training data's size %s (%s works at any size).",
            data_size,
            model.config.backbone_type,
        )
        return
    logger.warning(
        "The training images are %d×%d; the model's processor resizes them to %d×%d for training and at inference "
        "(set the processor's size, e.g. backbone_config image_size, to train at the data's size).",
        *data_size,
        *processor.image_size,
    )


def new_tower(backbone_type: str, backbone_config: dict | None, init_from: str | None, kwargs: dict) -> BT2Model:
    """A fresh model: its backbone from a config (random init) or from a pretrained checkpoint, with a fresh head."""
    if init_from:
        if backbone_config:
            kwargs = {**kwargs, "backbone_config": backbone_config}
        return BT2Model.from_pretrained_backbone(init_from, backbone_type, **kwargs)
    return BT2Model(BT2Config(backbone_type=backbone_type, backbone_config=backbone_config or {}, **kwargs))


def finish_tower(model: BT2Model, model_args: ModelArguments) -> None:
    """A text tower's tokenizer (when built from a config) and a frozen backbone, when asked."""
    if model.modality == "text" and model_args.tokenizer:
        from transformers import AutoTokenizer

        model.processor = AutoTokenizer.from_pretrained(model_args.tokenizer)
    if backbone_frozen(model, model_args.freeze_backbone, model_args.freeze_text_backbone):
        model.backbone.requires_grad_(False)


def backbone_frozen(model: BT2Model, freeze_backbone: bool, freeze_text_backbone: bool) -> bool:
    """Whether a tower's backbone is frozen: every tower with freeze_backbone, text towers with freeze_text_backbone."""
    return freeze_backbone or (freeze_text_backbone and model.modality == "text")


def build_pair(model_args: ModelArguments, overrides: dict[str, dict], num_classes: int) -> BT2PairModel:
    """The image tower (``backbone_type`` …) and the text tower (``text_backbone_type`` …) of a pair run."""
    if model_args.init_from_independent:
        raise ValueError("init_from_independent is not supported for image–text pairs.")
    if not model_args.text_backbone_type:
        raise ValueError(
            "A pair trains an image and a text tower: pass --text_backbone_type (hf_text or open_clip_text) with "
            "--text_init_from or --text_backbone_config, next to the image tower's --backbone_type."
        )
    specs = {
        "image": (model_args.backbone_type, model_args.backbone_config, model_args.init_from, model_args.pooling),
        "text": (model_args.text_backbone_type, model_args.text_backbone_config, model_args.text_init_from,
                 model_args.text_pooling),
    }  # fmt: skip
    towers = {}
    for tower, (backbone_type, backbone_config, init_from, pooling) in specs.items():
        kwargs = dict(pooling=pooling, num_classes=num_classes, logit_scale=model_args.logit_scale, **overrides[tower])
        if model_args.head_nonlinearity is not None:
            kwargs["head_nonlinearity"] = model_args.head_nonlinearity
        towers[tower] = new_tower(backbone_type, backbone_config, init_from, kwargs)
        if towers[tower].modality != tower:
            raise ValueError(
                f"The {tower} tower's backbone {backbone_type!r} encodes {towers[tower].modality}; choose a {tower} "
                "backbone."
            )
        finish_tower(towers[tower], model_args)
    return BT2PairModel(towers["image"], towers["text"])


def towers_of(model: torch.nn.Module) -> dict[str, BT2Model]:
    """The towers of a trained model: a pair's two, or the model itself."""
    return model.towers() if isinstance(model, BT2PairModel) else {model.modality: model}


@torch.no_grad()
def start_from_independent(model: BT2Model, independent: BT2Model) -> None:
    """Copy the independent model's backbone, projection and classifier into a BT² or BCT model.

    BT²: the head's projection ``h`` has ``feature_dim + old_embedding_dim`` rows; its first ``feature_dim`` rows give
    ``f`` and take the independent head's projection, so with the same nonlinearity ``f`` starts equal to the
    independent embedding and the classifier on ``f`` starts trained; the rest of the head keeps its initialisation.
    BCT (a linear head): the whole projection and classifier, which needs the independent model's width.
    """
    if independent.config.backbone_type != model.config.backbone_type:
        raise ValueError(
            f"init_from_independent: the independent model's backbone is {independent.config.backbone_type!r}, this "
            f"model's is {model.config.backbone_type!r}; they must be the same architecture."
        )
    try:
        model.backbone.load_state_dict(independent.backbone.state_dict())
    except RuntimeError as error:
        raise ValueError(
            "init_from_independent: the independent model's backbone does not fit this backbone_config (train with "
            f"the independent model's architecture): {error}"
        ) from error
    head, source = model.head, independent.head
    width = head.feature_dim if model.config.head_type == "basis_transformation" else head.projection.out_features
    if source.projection.weight.shape[0] != width or source.projection.in_features != head.projection.in_features:
        raise ValueError(
            f"init_from_independent: the independent embedding has {source.projection.weight.shape[0]} dims, this "
            f"model's {'BT² feature' if model.config.head_type == 'basis_transformation' else 'embedding'} {width}; "
            "they must be equal."
        )
    head.projection.weight[:width].copy_(source.projection.weight)
    head.projection.bias[:width].copy_(source.projection.bias)
    if head.classifier is not None and source.classifier is not None:
        if head.classifier.weight.shape == source.classifier.weight.shape:
            head.classifier.weight.copy_(source.classifier.weight)


def set_train_mode(model: torch.nn.Module, freeze_backbone: bool, freeze_text_backbone: bool = False) -> None:
    """Training mode, except a frozen backbone, which stays in eval mode (no dropout, fixed normalisation)."""
    model.train()
    for tower in towers_of(getattr(model, "module", model)).values():
        if backbone_frozen(tower, freeze_backbone, freeze_text_backbone):
            tower.backbone.eval()
