"""One training loop on accelerate for every method and every tower (image towers, text towers, image–text pairs).

:func:`train` is the Python entry point (``bt2 train`` and the demo call it); it takes the three run-argument
dataclasses and a method config, optionally in-memory data and an evaluation hook, and returns the directory of the
saved model. What differs between towers is only what a batch feeds the model (``pixel_values`` and/or tokens) and
which frozen reference embeds what (image references the augmented images, text references the captions): the
batch order, checkpoints, exact resume, multi-process training, mixed precision and the card are one code path.
Nothing is written before every input has been checked and the references and prototypes are ready, so
a bad input leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compatibility import trained_against
from ..configuration_bt2 import BT2Config
from ..data.datasets import ImageClassificationData, load_image_classification
from ..data.device_loader import DeviceTensorDataLoader, ShardedDataLoader
from ..data.image_text import ImageTextData, load_image_text, tokenize_texts
from ..data.subsets import parse_class_subset
from ..data.transforms import BatchAugmentation, ModelInputTransform
from ..fingerprint import combine_fingerprint, fingerprint_state_dict
from ..methods import CompatibilityMethod, MethodConfig, get_method
from ..modeling_bt2 import BT2Model
from ..utils.io import atomic_write_json, atomic_write_text, final_location
from .arguments import BT2TrainingArguments, DataArguments, ModelArguments
from .checkpointing import (
    check_no_pickles,
    check_resume_settings,
    finish_run,
    list_checkpoints,
    load_checkpoint,
    read_run,
    resolve_checkpoint,
    save_checkpoint,
    start_run,
)
from .prototypes import compute_class_means
from .references import FrozenReference
from .towers import TOWER_DIRS, BT2PairModel, is_pair_directory

logger = logging.getLogger(__name__)

EvalFn = Callable[[BT2Model, Any, int], "dict[str, float] | None"]
LOG_FILE = "training_log.json"
LOG_CSV_FILE = "training_log.csv"

# Seeds of the no-grad passes, kept apart from the training epochs' seeds (epoch e uses seed + e).
_PROTOTYPE_EPOCH = -1
_PRECOMPUTE_EPOCH = -2


def _augmentation_seed(seed: int, epoch: int, batch_index: int) -> int:
    """A distinct, reproducible seed per (epoch, micro-batch): resume and any process count draw the same crops."""
    return (seed * 1_000_003 + (epoch + 3) * 100_003 + batch_index) % (2**62)


# Our schedule names → transformers' (our "constant" keeps the linear warm-up).
_SCHEDULERS = {"cosine": "cosine", "constant": "constant_with_warmup"}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``transformers.get_scheduler``: linear warm-up over ``warmup_steps``, then cosine decay to 0 or constant.

    The multiplier of the peak learning rate for optimizer step ``s`` (0-based) is ``s / warmup_steps`` during the
    warm-up (so the first step has learning rate 0, as in the transformers ``Trainer``), then
    ``0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))`` (cosine) or 1 (constant).
    """
    if schedule not in _SCHEDULERS:
        raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose one of {list(_SCHEDULERS)}.")
    from transformers import get_scheduler

    return get_scheduler(
        _SCHEDULERS[schedule], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


def build_optimizer(model: torch.nn.Module, args: BT2TrainingArguments, device: torch.device) -> torch.optim.Optimizer:
    """Adam (coupled L2, as the research code), AdamW or SGD; fused kernels on CUDA.

    With ``args.head_learning_rate``, the heads train at that rate and the backbones at ``learning_rate`` (a
    pretrained backbone is fine-tuned gently while a fresh head learns fast); the schedule scales both.
    """
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if args.head_learning_rate is not None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        backbone = [p for name, p in named if "backbone." in name]
        head = [p for name, p in named if "backbone." not in name]
        params = [group for group in ({"params": backbone, "lr": args.learning_rate},
                                      {"params": head, "lr": args.head_learning_rate}) if group["params"]]  # fmt: skip
    extra = {"fused": True} if device.type == "cuda" else {}
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay, **extra)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay, **extra)
    return torch.optim.SGD(
        params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay, **extra
    )


def _first_non_finite(values: dict[str, torch.Tensor]) -> tuple[str, float] | None:
    """The first non-finite entry (named loss terms before the total ``loss``), or ``None``."""
    for key in sorted(values, key=lambda k: (k == "loss", k)):
        value = float(values[key])
        if not math.isfinite(value):
            return key, value
    return None


# Divergence short of NaN: a step's loss above this multiple of the run's first logged loss, or a weight above this
# absolute value at a save, stops the run (nothing is saved). Trained weights of these models stay far below it.
DIVERGENCE_FACTOR = 100.0
WEIGHT_BOUND = 1e6


@torch.no_grad()
def _check_finite_model(model: torch.nn.Module, step: int) -> None:
    """Refuse to save a model holding NaN or inf (one pass over the weights, before every save).

    What is saved is checked (the state dict): a non-persistent buffer such as open_clip's causal attention mask
    (-inf above the diagonal by design) is rebuilt on load, never saved.
    """
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FloatingPointError(
                f"Training diverged: after step {step} the weight {name} holds {bad} non-finite values (NaN/inf). "
                "Nothing was saved for this step; earlier checkpoints are intact. Lower the learning rate or check "
                "the data."
            )
        if tensor.is_floating_point() and tensor.numel():
            largest = float(tensor.detach().abs().max())
            if largest > WEIGHT_BOUND:
                raise FloatingPointError(
                    f"Training diverged: after step {step} the weight {name} reaches {largest:.3g} in absolute value "
                    f"(the bound is {WEIGHT_BOUND:g}). Nothing was saved for this step; earlier checkpoints are "
                    "intact. Lower the learning rate."
                )


def _check_output_dir(args: BT2TrainingArguments) -> None:
    if not (math.isfinite(args.learning_rate) and args.learning_rate >= 0):
        raise ValueError(f"learning_rate must be a finite number ≥ 0, got {args.learning_rate}.")
    path = Path(args.output_dir)
    if path.is_file():
        raise ValueError(f"output_dir {path} is a file; pass a directory.")
    if args.resume_from_checkpoint or args.overwrite_output_dir or not path.exists():
        return
    if any(path.iterdir()):
        raise FileExistsError(
            f"output_dir {path} already exists and is not empty. Pass --overwrite_output_dir true, choose another "
            "directory, or --resume_from_checkpoint latest to continue a run."
        )


def _load_image_text_data(data_args: DataArguments, train_data: Any, seed: int, method) -> ImageTextData:
    if train_data is None:
        if data_args.dataset in ("fashion_mnist", "fashion-mnist"):
            raise ValueError(
                f"Method {method.name!r} trains a {method.modality} tower on image–text data: pass --dataset with a "
                "`datasets` folder (save_to_disk) or Hub id holding an image and a text/caption column."
            )
        data = load_image_text(
            data_args.dataset, data_args.train_split, image_column=data_args.image_column,
            text_column=data_args.text_column, label_column=data_args.label_column,
            old_target_column=data_args.old_target_column, image_size=data_args.image_size,
            num_channels=data_args.num_channels, in_memory=data_args.in_memory,
        )  # fmt: skip
    elif isinstance(train_data, ImageTextData):
        data = train_data
    else:
        raise TypeError(f"Method {method.name!r} trains on image–text data: train_data must be an ImageTextData.")
    if method.requires_labels and not data.has_labels:
        raise ValueError(f"Method {method.name!r} needs class labels; the data has no label column.")
    if data.class_names is not None:
        data = data.select_classes(parse_class_subset(data_args.class_subset, data.num_classes))
    elif data_args.class_subset:
        raise ValueError("class_subset needs labelled data; this image–text data has no label column.")
    data = data.take_samples(data_args.max_train_samples, seed=seed)
    if len(data) == 0:
        raise ValueError("No training rows left after the class subset / max_train_samples selection.")
    return data


def _load_train_data(data_args: DataArguments, train_data: Any, seed: int, method=None):
    if method is not None and method.modality != "image":
        return _load_image_text_data(data_args, train_data, seed, method)
    if train_data is None:
        data = load_image_classification(
            data_args.dataset,
            data_args.train_split,
            data_dir=data_args.data_dir,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            image_size=data_args.image_size,
            num_channels=data_args.num_channels,
            in_memory=data_args.in_memory,
        )
    elif isinstance(train_data, ImageClassificationData):
        data = train_data
    elif isinstance(train_data, (tuple, list)) and len(train_data) == 2:
        data = ImageClassificationData(images=train_data[0], labels=train_data[1])
    else:
        raise TypeError("train_data must be an ImageClassificationData or an (images, labels) pair of tensors.")
    subset = parse_class_subset(data_args.class_subset, data.num_classes)
    data = data.select_classes(subset)
    data = data.take_per_class(data_args.max_train_samples, seed=seed)
    if len(data) == 0:
        raise ValueError("No training samples left after the class subset / max_train_samples selection.")
    return data


def _build_model(
    model_args: ModelArguments, method: CompatibilityMethod, references: dict[str, FrozenReference], num_classes: int
) -> BT2Model:
    dims = {name: ref.embedding_dim for name, ref in references.items()}
    if model_args.old_embedding_dim is not None and "old" in dims and dims["old"] != model_args.old_embedding_dim:
        raise ValueError(
            f"The old model {references['old'].name_or_path} has {dims['old']}-d embeddings, but old_embedding_dim="
            f"{model_args.old_embedding_dim} was asked for. Pass the old checkpoint of that width, or fix "
            "old_embedding_dim."
        )
    overrides = method.build_config_overrides(dims, model_args.embedding_dim)
    if method.modality == "pair":
        return _build_pair(model_args, overrides, num_classes)
    if model_args.head_nonlinearity is not None:
        overrides["head_nonlinearity"] = model_args.head_nonlinearity
    elif "independent" in references and overrides.get("head_type") == "basis_transformation":
        # BT² matches its feature f to the independent model's embedding: f must be able to take the same signs,
        # so it inherits the independent head's nonlinearity (a ReLU'd f cannot match a signed embedding).
        overrides["head_nonlinearity"] = references["independent"].model.config.head_nonlinearity
    kwargs = dict(pooling=model_args.pooling, num_classes=num_classes, logit_scale=model_args.logit_scale, **overrides)
    model = _new_tower(model_args.backbone_type, model_args.backbone_config, model_args.init_from, kwargs)
    if model.modality != method.modality:
        raise ValueError(
            f"Method {method.name!r} trains a {method.modality} tower, but backbone {model_args.backbone_type!r} "
            f"encodes {model.modality}; choose a {method.modality} backbone_type."
        )
    _finish_tower(model, model_args)
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
        _start_from_independent(model, independent)
    return model


def _match_processor_to_data(model: BT2Model, data: ImageClassificationData, model_args: ModelArguments) -> None:
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
    if model.config.backbone_type == "small_cnn" and given is None:
        model.processor = type(processor).from_dict({**processor.to_dict(), "size": list(data_size)})
        model.config.backbone_config["image_size"] = list(data_size)
        logger.info("The processor takes the training data's size %s (small_cnn works at any size).", data_size)
        return
    logger.warning(
        "The training images are %d×%d; the model's processor resizes them to %d×%d for training and at inference "
        "(set the processor's size, e.g. backbone_config image_size, to train at the data's size).",
        *data_size,
        *processor.image_size,
    )


def _new_tower(backbone_type: str, backbone_config: dict | None, init_from: str | None, kwargs: dict) -> BT2Model:
    """A fresh model: its backbone from a config (random init) or from a pretrained checkpoint, with a fresh head."""
    if init_from:
        if backbone_config:
            kwargs = {**kwargs, "backbone_config": backbone_config}
        return BT2Model.from_pretrained_backbone(init_from, backbone_type, **kwargs)
    return BT2Model(BT2Config(backbone_type=backbone_type, backbone_config=backbone_config or {}, **kwargs))


def _finish_tower(model: BT2Model, model_args: ModelArguments) -> None:
    """A text tower's tokenizer (when built from a config) and a frozen backbone, when asked."""
    if model.modality == "text" and model_args.tokenizer:
        from transformers import AutoTokenizer

        model.processor = AutoTokenizer.from_pretrained(model_args.tokenizer)
    if _backbone_frozen(model, model_args.freeze_backbone, model_args.freeze_text_backbone):
        model.backbone.requires_grad_(False)


def _backbone_frozen(model: BT2Model, freeze_backbone: bool, freeze_text_backbone: bool) -> bool:
    """Whether a tower's backbone is frozen: every tower with freeze_backbone, text towers with freeze_text_backbone."""
    return freeze_backbone or (freeze_text_backbone and model.modality == "text")


def _build_pair(model_args: ModelArguments, overrides: dict[str, dict], num_classes: int) -> BT2PairModel:
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
        towers[tower] = _new_tower(backbone_type, backbone_config, init_from, kwargs)
        if towers[tower].modality != tower:
            raise ValueError(
                f"The {tower} tower's backbone {backbone_type!r} encodes {towers[tower].modality}; choose a {tower} "
                "backbone."
            )
        _finish_tower(towers[tower], model_args)
    return BT2PairModel(towers["image"], towers["text"])


def _towers(model: torch.nn.Module) -> dict[str, BT2Model]:
    """The towers of a trained model: a pair's two, or the model itself."""
    return model.towers() if isinstance(model, BT2PairModel) else {model.modality: model}


def _reference_paths(method: CompatibilityMethod, model_args: ModelArguments) -> dict[str, tuple[str, str | None]]:
    """Role → (checkpoint, revision) of every frozen reference. A pair's independent reference is a saved pair
    (``clip``): its two towers become ``independent_image`` and ``independent_text``."""
    paths = {}
    for name in method.requires:
        path, revision = getattr(model_args, f"{name}_model"), getattr(model_args, f"{name}_model_revision")
        if name == "independent" and method.modality == "pair":
            if not is_pair_directory(path):
                raise ValueError(
                    f"The independent model of a pair is a saved pair (the output of bt2 train --method clip: "
                    f"{', '.join(TOWER_DIRS.values())} and pair.json); {path} holds none."
                )
            for tower, folder in TOWER_DIRS.items():
                paths[f"independent_{tower}"] = (str(Path(path) / folder), revision)
        else:
            paths[name] = (path, revision)
    return paths


@torch.no_grad()
def _start_from_independent(model: BT2Model, independent: BT2Model) -> None:
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


def _make_loader(data: ImageClassificationData, batch_size: int, accelerator, args, seed: int, *, sharded: bool,
                 shuffle: bool, drop_last: bool):  # fmt: skip
    num_processes = accelerator.num_processes if sharded else 1
    process_index = accelerator.process_index if sharded else 0
    on_device = args.data_on_device if args.data_on_device is not None else data.in_memory
    if data.in_memory:
        device = accelerator.device if on_device else torch.device("cpu")
        return DeviceTensorDataLoader(
            data.images, data.labels, batch_size, device, num_processes, process_index, shuffle, seed, drop_last
        )
    return ShardedDataLoader(
        data, batch_size, num_processes, process_index, shuffle, seed, drop_last, args.num_workers, accelerator.device
    )


def _run_settings(model_args, data_args, args, method) -> dict[str, Any]:
    """What a run trains with, as JSON (recorded in run.json; a resume must ask the same, see check_resume_settings)."""

    def at_final_location(value: Any) -> Any:
        # paths inside a staging folder (a demo run) are recorded where they will live; a resume computes its asked
        # settings the same way, so the comparison is unchanged
        if isinstance(value, str):
            return final_location(value)
        if isinstance(value, dict):
            return {key: at_final_location(item) for key, item in value.items()}
        if isinstance(value, list):
            return [at_final_location(item) for item in value]
        return value

    def plain(values: dict[str, Any]) -> dict[str, Any]:
        return at_final_location(json.loads(json.dumps(values, default=str)))

    return {"model": plain(dataclasses.asdict(model_args)), "data": plain(dataclasses.asdict(data_args)),
            "training": plain(dataclasses.asdict(args)),
            "method": plain({"name": method.name, **method.config.to_dict()})}  # fmt: skip


def _write_logs(output_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(output_dir / LOG_FILE, history)
    keys: list[str] = []
    for entry in history:
        keys += [k for k in entry if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(output_dir / LOG_CSV_FILE, buffer.getvalue())


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: BT2TrainingArguments,
    method_config: MethodConfig | dict[str, Any] | None = None,
    *,
    train_data: ImageClassificationData | ImageTextData | tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_fn: EvalFn | None = None,
) -> Path:
    """Train one model (an image tower: old, independent, BCT or BT²; a text tower: ``independent_text``,
    ``bct_text``, ``bt2_text``; an image–text pair: ``clip``, ``bt2_pair``) and save it with ``save_pretrained``
    (a pair: two checkpoints, ``output_dir/image_tower`` and ``output_dir/text_tower``, see
    :mod:`bt2_hf.training.towers`).

    Args:
        model_args (:class:`ModelArguments`): backbone, head width, frozen reference checkpoints.
        data_args (:class:`DataArguments`): dataset, class subset, augmentation.
        training_args (:class:`BT2TrainingArguments`): method name, optimisation, precision, checkpoints, logging.
        method_config (:class:`~bt2_hf.methods.MethodConfig` or `dict`, *optional*): the method's hyper-parameters;
            defaults to the method's defaults.
        train_data (:class:`~bt2_hf.data.ImageClassificationData` or `(images, labels)`, *optional*): in-memory data
            instead of loading ``data_args.dataset`` (uint8 ``(N, C, H, W)`` images); the class subset still applies.
            Text towers take an :class:`~bt2_hf.data.image_text.ImageTextData` (images, captions, optional labels).
        eval_fn (`callable`, *optional*): called after every epoch on every process as
            ``eval_fn(model, accelerator, epoch)``; the returned dict of numbers is logged (e.g. retrieval top-1).

    Returns:
        `Path`: ``training_args.output_dir``, holding the model (safetensors, config with ``config.training``
        metadata, processor), ``training_log.json`` / ``.csv`` and ``checkpoints/``.

    >>> from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train
    >>> path = train(  # doctest: +SKIP
    ...     ModelArguments(backbone_config='{"widths": [16, 32]}', embedding_dim=32),
    ...     DataArguments(dataset="fashion_mnist", class_subset="0-4", max_train_samples=2000),
    ...     BT2TrainingArguments(output_dir="runs/old", method="independent", per_device_train_batch_size=64),
    ... )
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed

    args = training_args
    method = get_method(args.method, method_config)
    _check_output_dir(args)
    output_dir = Path(args.output_dir)
    # train() may run several times in one Python process (the demo trains old → independent → bt2). accelerate keeps
    # its mixed-precision setting in a process-wide singleton; reset it (not the process group) so that every call
    # gets the precision it asks for.
    AcceleratorState._reset_state(reset_partial_state=False)
    # accelerate only starts a gloo process group on CPU when told cpu=True; under torchrun on a machine without
    # CUDA that is what the user wants (otherwise every process silently trains alone).
    cpu_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu_distributed,
        mixed_precision=args.mixed_precision,
        log_with=[t.strip() for t in args.log_with.split(",")] if args.log_with else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    device = accelerator.device
    set_seed(args.seed)

    # ---- everything that can fail on bad input happens before anything is written
    data = _load_train_data(data_args, train_data, args.seed, method)
    # The images of the rows (image towers: the data itself; text towers: the captions' paired images, which only the
    # frozen image references see) and their labels (None for unlabelled image–text data).
    image_data = data.images if isinstance(data, ImageTextData) else data
    has_labels = not isinstance(data, ImageTextData) or data.has_labels
    old_column = data.old_targets if isinstance(data, ImageTextData) else None
    missing = [name for name in method.requires if not getattr(model_args, f"{name}_model")]
    if missing:
        raise ValueError(
            f"Method {method.name!r} needs the frozen {' and '.join(missing)} model(s); pass "
            + ", ".join(f"--{name}_model <checkpoint>" for name in missing)
            + "."
        )
    use_channels_last = args.channels_last
    backbone_is_cnn = model_args.backbone_type == "small_cnn" or (
        (model_args.backbone_config or {}).get("model_type") in ("resnet", "convnext", "regnet", "efficientnet")
    )
    if use_channels_last is None:
        use_channels_last = backbone_is_cnn and device.type == "cuda"
    references = {
        name: FrozenReference.load(
            name, path, revision, device=device, channels_last=use_channels_last and device.type == "cuda"
        )
        for name, (path, revision) in _reference_paths(method, model_args).items()
    }
    for name, ref in references.items():
        wanted = {"independent": method.modality, "independent_text": "text"}.get(name, "image")
        if ref.modality != wanted:
            raise ValueError(
                f"The {name} model {ref.name_or_path} encodes {ref.modality}; method {method.name!r} needs a {wanted} "
                f"model as its {name} reference."
            )
        if ref.modality == "text":
            ref.tokenize(data.texts, data_args.max_text_length)
    if old_column is not None and "old" in references and old_column.shape[1] != references["old"].embedding_dim:
        raise ValueError(
            f"The column {data_args.old_target_column} holds {old_column.shape[1]}-d old targets, but the old model "
            f"{references['old'].name_or_path} embeds into {references['old'].embedding_dim} dims."
        )
    for name, ref in references.items():
        if ref.model.config.num_classes and ref.model.config.num_classes != data.num_classes and name == "independent":
            logger.warning(
                "The independent model was trained with %d classes, this data has %d.",
                ref.model.config.num_classes,
                data.num_classes,
            )
    set_seed(args.seed)  # the model's initialisation does not depend on what was loaded before
    model = _build_model(model_args, method, references, data.num_classes)
    towers = _towers(model)
    input_transform = tokens = None  # tokens: the text tower's captions, tokenised once (rows picked per batch)
    if "image" in towers:
        _match_processor_to_data(towers["image"], image_data, model_args)
        input_transform = ModelInputTransform.from_processor(
            towers["image"].processor, channels_last=use_channels_last
        )
    if "text" in towers:
        tokens = tokenize_texts(towers["text"].processor, data.texts, data_args.max_text_length)
    has_images = not isinstance(data, ImageTextData) or data.has_images
    augmentation = (
        BatchAugmentation(data_args.augment_padding, data_args.horizontal_flip)
        if has_images
        else BatchAugmentation(0, False)  # 1-pixel placeholders: nothing to augment
    )
    batch_size = args.per_device_train_batch_size
    loader = _make_loader(image_data, batch_size, accelerator, args, args.seed, sharded=True, shuffle=True,
                          drop_last=True)  # fmt: skip
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = len(loader) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"One epoch has {len(loader)} batches, fewer than gradient_accumulation_steps={accumulation}; lower the "
            "batch size or the accumulation."
        )
    total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs

    def no_grad_pass(epoch: int, augment: bool, sharded: bool):
        """(augmented images, labels, rows) over the whole training set, for prototypes and precomputed targets."""
        pass_loader = _make_loader(image_data, 4 * batch_size, accelerator, args, args.seed, sharded=sharded,
                                   shuffle=False, drop_last=False)  # fmt: skip
        for batch_index, batch in enumerate(pass_loader.iter_epoch(epoch)):
            params = None
            if augment:
                seed = _augmentation_seed(args.seed, epoch, batch_index)
                params = augmentation.sample(batch["global_batch_size"], seed).slice(
                    batch["global_offset"], batch["global_offset"] + len(batch["labels"])
                )
            yield augmentation(batch["images"], params), batch["labels"], batch["index"]

    precomputed: dict[str, torch.Tensor] = {}
    if old_column is not None and "old" in references:
        precomputed["old"] = old_column.to(device)
    # Captions are never augmented, so a frozen text reference gives one embedding per caption: embed each once.
    # With precomputed targets, each process also embeds every image once (a single random augmentation per image,
    # as the research code); the old model's table then also gives the prototypes W_o (below). Cheaper than online
    # targets whenever a run sees more images than the data set holds (steps × batch > N).
    if references:
        for name, ref in references.items():
            if name in precomputed or (ref.modality == "image" and args.reference_targets != "precomputed"):
                continue
            table = torch.zeros(len(data), ref.embedding_dim, device=device)
            with accelerator.autocast():
                if ref.modality == "image":
                    for images, _, rows in no_grad_pass(_PRECOMPUTE_EPOCH, True, False):
                        table[rows.to(device)] = ref.embed(images)
                else:
                    for start in range(0, len(data), 4 * batch_size):
                        rows = torch.arange(start, min(start + 4 * batch_size, len(data)))
                        table[rows.to(device)] = ref.embed_rows(rows)
            precomputed[name] = table

    prototypes = None
    if method.uses_prototypes and has_labels:
        ref = references[method.prototype_reference]
        table = precomputed.get(method.prototype_reference) if ref.modality == "image" else None
        if table is not None and (old_column is not None or args.prototype_augmentation):
            # The stored targets are the reference's word on every training image (one augmented view each, or the
            # given column): W_o is their class means, and no second pass over the data is needed.
            prototypes = compute_class_means(
                [(table, image_data.labels)], data.num_classes, lambda x: x, table.shape[1], device,
                class_names=data.class_names,
            )  # fmt: skip
        else:
            with accelerator.autocast():
                prototypes = compute_class_means(
                    (
                        (images, labels)
                        for images, labels, _ in no_grad_pass(_PROTOTYPE_EPOCH, args.prototype_augmentation, True)
                    ),
                    data.num_classes,
                    ref.embed,
                    ref.embedding_dim,
                    device,
                    reduce=(lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else None,
                    class_names=data.class_names,
                )
    method.prepare(prototypes)

    # ---- training state
    _train_mode(model, model_args.freeze_backbone, model_args.freeze_text_backbone)
    text_features = None  # a frozen text backbone's pooled output per caption, when stored (see the argument)
    if (
        tokens is not None
        and model_args.cache_frozen_text_features
        and _backbone_frozen(towers["text"], model_args.freeze_backbone, model_args.freeze_text_backbone)
    ):
        text_features = _frozen_text_features(towers["text"], tokens, 4 * batch_size, device, accelerator)
    if use_channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args, device)
    warmup = args.warmup_steps + int(round(args.warmup_epochs * steps_per_epoch))
    scheduler = build_lr_scheduler(optimizer, args.lr_scheduler_type, warmup, total_steps)
    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step it once per
    # process). Checkpoints save it as JSON (checkpointing.py), never through accelerate's pickled custom state.
    model, optimizer = accelerator.prepare(model, optimizer)
    forward_model = torch.compile(model) if args.torch_compile else model

    global_step = 0
    history: list[dict[str, Any]] = []
    resume_path = None
    if args.resume_from_checkpoint:
        owner = read_run(output_dir)  # "latest" means the newest checkpoint of the run that owns output_dir
        resume_path = resolve_checkpoint(output_dir, args.resume_from_checkpoint, owner and owner["run_id"])
        check_no_pickles(resume_path)  # before anything is written or read: a pickle would run its code
    settings = _run_settings(model_args, data_args, args, method)
    changes = (
        check_resume_settings(output_dir, settings, args.resume_with_changes) if args.resume_from_checkpoint else None
    )
    if accelerator.is_main_process:
        start_run(output_dir, overwrite=args.overwrite_output_dir, resume=bool(args.resume_from_checkpoint),
                  settings=settings, changes=changes)  # fmt: skip
    accelerator.wait_for_everyone()
    run = read_run(output_dir)
    if resume_path is not None:
        state = load_checkpoint(accelerator, resume_path, model=model, optimizer=optimizer, scheduler=scheduler)
        global_step = int(state["global_step"])
        history = list(state.get("log_history", []))
        logger.info("Resumed from %s at step %d", resume_path, global_step)
    if accelerator.trackers or args.log_with:
        accelerator.init_trackers(
            "bt2_hf", config={**dataclasses.asdict(args), **method.config.to_dict(), "method": method.name}
        )

    # the loss divergence is judged against: the run's first logged loss (kept in the log across a resume)
    first_loss = next((float(e["loss"]) for e in history if "loss" in e), None)
    stop_at = min(total_steps, args.stop_after_steps) if args.stop_after_steps else total_steps
    progress = tqdm(
        total=total_steps,
        initial=global_step,
        disable=args.disable_tqdm or not accelerator.is_local_main_process,
        desc=f"train {method.name}",
    )
    window: dict[str, torch.Tensor] = {}
    window_steps = 0
    window_start = time.perf_counter()
    images_seen = 0
    logger.info(
        "Training %s: %d samples, %d classes, %d steps (%d per epoch), global batch %d",
        method.name, len(data), data.num_classes, total_steps, steps_per_epoch,
        batch_size * accelerator.num_processes * accumulation,
    )  # fmt: skip

    while global_step < stop_at:
        epoch = global_step // steps_per_epoch
        first_batch = (global_step % steps_per_epoch) * accumulation
        batches = loader.iter_epoch(epoch, start_batch=first_batch)
        batch_index = first_batch
        while global_step < stop_at and global_step < (epoch + 1) * steps_per_epoch:
            step_losses: dict[str, torch.Tensor] = {}
            for micro in range(accumulation):
                batch = next(batches)
                params = augmentation.sample(
                    batch["global_batch_size"], _augmentation_seed(args.seed, epoch, batch_index)
                )
                params = params.slice(batch["global_offset"], batch["global_offset"] + len(batch["labels"]))
                batch_index += 1
                images = augmentation(batch["images"], params)
                labels = batch["labels"] if has_labels else None
                with accelerator.autocast():
                    targets = {}
                    for name, ref in references.items():
                        if name in precomputed:
                            targets[name] = precomputed[name][batch["index"].to(device)]
                        elif ref.modality == "image":
                            targets[name] = ref.embed(images)
                        else:
                            targets[name] = ref.embed_rows(batch["index"])
                    inputs = {} if input_transform is None else {"pixel_values": input_transform(images)}
                    if text_features is not None:
                        key = "text_backbone_output" if "image" in towers else "backbone_output"
                        inputs[key] = text_features[batch["index"].to(device)]
                    elif tokens is not None:
                        inputs.update({k: v[batch["index"]].to(device) for k, v in tokens.items()})
                    outputs = forward_model(**inputs)
                    losses = method.compute_loss(outputs, targets, labels)
                loss = sum(value for key, value in losses.items() if key.endswith("_loss"))
                # Only the last micro-batch synchronises gradients across processes.
                context = accelerator.no_sync(model) if micro < accumulation - 1 else contextlib.nullcontext()
                with context:
                    accelerator.backward(loss / accumulation)
                for key, value in losses.items():
                    step_losses[key] = step_losses.get(key, 0.0) + value.detach().float() / accumulation
                step_losses["loss"] = step_losses.get("loss", 0.0) + loss.detach().float() / accumulation
            if args.max_grad_norm:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            # One host sync per step: a NaN/inf loss term or gradient stops the run before it reaches the weights.
            checked = {**step_losses, "grad_norm": torch.as_tensor(grad_norm, dtype=torch.float32, device=device)}
            checked_values = torch.stack([v.reshape(()).to(device) for v in checked.values()]).tolist()
            if not all(math.isfinite(v) for v in checked_values):
                term, value = _first_non_finite(checked)
                raise FloatingPointError(
                    f"Training diverged at step {global_step + 1}: {term} = {value}. Nothing was saved for this step; "
                    f"earlier checkpoints are intact. Lower the learning rate (now {scheduler.get_last_lr()[0]:.3g}) "
                    "or check the data."
                )
            # A finite but exploding loss diverges too: far above where this run started, it stops, saving nothing.
            step_loss = checked_values[list(checked).index("loss")]
            if first_loss is None:
                first_loss = step_loss
            elif step_loss > DIVERGENCE_FACTOR * max(first_loss, 0.1):
                raise FloatingPointError(
                    f"Training diverged at step {global_step + 1}: loss = {step_loss:.4g}, more than "
                    f"{DIVERGENCE_FACTOR:g}× the first logged loss ({first_loss:.4g}). Nothing was saved for this step; "
                    f"earlier checkpoints are intact. Lower the learning rate (now {scheduler.get_last_lr()[0]:.3g})."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            images_seen += batch_size * accumulation * accelerator.num_processes
            progress.update(1)
            for key, value in step_losses.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1

            if global_step % args.logging_steps == 0 or global_step == stop_at:
                keys = sorted(window)
                stacked = torch.stack([window[k] / window_steps for k in keys])
                stacked = accelerator.reduce(stacked, "mean") if accelerator.num_processes > 1 else stacked
                values = dict(zip(keys, stacked.tolist()))
                for key, value in values.items():
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"{key} became {value} at step {global_step}; lower the learning rate or check the data."
                        )
                elapsed = time.perf_counter() - window_start
                entry = {"step": global_step, "epoch": round(global_step / steps_per_epoch, 4),
                         "learning_rate": scheduler.get_last_lr()[0], **values,
                         "images_per_second": images_seen / max(elapsed, 1e-9)}  # fmt: skip
                history.append(entry)
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=global_step)
                progress.set_postfix(loss=f"{values['loss']:.4f}")
                if accelerator.is_main_process:
                    _write_logs(output_dir, history)
                window, window_steps, images_seen, window_start = {}, 0, 0, time.perf_counter()

            end_of_epoch = global_step % steps_per_epoch == 0
            if end_of_epoch and eval_fn is not None:
                unwrapped = accelerator.unwrap_model(model)
                unwrapped.eval()
                metrics = eval_fn(unwrapped, accelerator, global_step // steps_per_epoch)
                _train_mode(unwrapped, model_args.freeze_backbone, model_args.freeze_text_backbone)
                if metrics:
                    entry = {"step": global_step, "epoch": global_step // steps_per_epoch,
                             **{f"eval_{k}": float(v) for k, v in metrics.items()}}  # fmt: skip
                    history.append(entry)
                    accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=global_step)
                    if accelerator.is_main_process:
                        _write_logs(output_dir, history)
            if (args.save_steps and global_step % args.save_steps == 0) or global_step == stop_at < total_steps:
                _check_finite_model(model, global_step)
                save_checkpoint(
                    accelerator, output_dir, global_step,
                    {"global_step": global_step, "total_steps": total_steps, "log_history": history},
                    args.save_total_limit, run_id=run["run_id"], model=model, optimizer=optimizer, scheduler=scheduler,
                )  # fmt: skip
    progress.close()

    if global_step < total_steps:
        logger.info("Stopped at step %d of %d; resume with --resume_from_checkpoint latest.", global_step, total_steps)
        accelerator.end_training()
        return output_dir

    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    metadata = _training_metadata(
        method, data, model_args, data_args, args, references, total_steps, accelerator.num_processes
    )
    for tower, tower_model in _towers(unwrapped).items():
        # a pair's tower records which one it is and where its partner is saved
        pair = {"pair": {"tower": tower, "partner": TOWER_DIRS[{"image": "text", "text": "image"}[tower]]}}
        tower_model.config.training = {**metadata, **(pair if isinstance(unwrapped, BT2PairModel) else {})}
        # Training records what it trained against, never compatibility: only `bt2 verify` measures and writes that.
        tower_model.config.compatible_with = []
    _check_finite_model(unwrapped, global_step)
    accelerator.wait_for_everyone()
    # get_state_dict gathers full parameters under FSDP (every process takes part); the fingerprint covers them.
    full_state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process, state_dict=full_state_dict)
    if accelerator.is_main_process:
        _write_logs(output_dir, history)
        finish_run(output_dir, run)
        logger.info(
            "Saved the %s model to %s (checkpoints: %d)", method.name, output_dir, len(list_checkpoints(output_dir))
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


# Frozen text features of the runs of this process, by (backbone weights + tokenizer, captions, precision, device): the
# stages of a pipeline that share a frozen pretrained encoder run it once. Bounded: a few caption sets at most.
_FROZEN_TEXT_FEATURES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_FROZEN_TEXT_FEATURES_KEPT = 4


@torch.no_grad()
def _frozen_text_features(tower: BT2Model, tokens: dict, chunk: int, device, accelerator) -> torch.Tensor:
    """The frozen (eval-mode) text backbone's pooled output for every caption, ``(num_captions, dim)``."""
    captions = hashlib.sha256()
    for name in sorted(tokens):
        captions.update(name.encode())
        captions.update(tokens[name].cpu().contiguous().numpy().tobytes())
    backbone = tower.backbone
    key = (
        combine_fingerprint(fingerprint_state_dict(backbone.state_dict()), tower.processor),
        captions.hexdigest(),
        str(accelerator.mixed_precision),
        str(device),
    )
    if key in _FROZEN_TEXT_FEATURES:
        _FROZEN_TEXT_FEATURES.move_to_end(key)
        return _FROZEN_TEXT_FEATURES[key]
    was_training = backbone.training
    backbone.eval()
    count = len(next(iter(tokens.values())))
    parts = []
    with accelerator.autocast():
        for start in range(0, count, chunk):
            inputs = {k: v[start : start + chunk].to(device) for k, v in tokens.items()}
            parts.append(backbone(**inputs).float())
    backbone.train(was_training)
    features = _FROZEN_TEXT_FEATURES[key] = torch.cat(parts)
    while len(_FROZEN_TEXT_FEATURES) > _FROZEN_TEXT_FEATURES_KEPT:
        _FROZEN_TEXT_FEATURES.popitem(last=False)
    return features


def _train_mode(model: torch.nn.Module, freeze_backbone: bool, freeze_text_backbone: bool = False) -> None:
    """Training mode, except a frozen backbone, which stays in eval mode (no dropout, fixed normalisation)."""
    model.train()
    for tower in _towers(getattr(model, "module", model)).values():
        if _backbone_frozen(tower, freeze_backbone, freeze_text_backbone):
            tower.backbone.eval()


def _trained_against(old: FrozenReference | None) -> dict[str, Any] | None:
    """The old model a BCT/BT² run trained against (reference, fingerprint, prefix width): a record, not a claim."""
    if old is None:
        return None
    return trained_against(final_location(old.name_or_path), old.model.config.fingerprint, old.embedding_dim,
                           old.revision)  # fmt: skip


def _recorded_path(name_or_path: str | None) -> str | None:
    """A start or reference as the config records it: where it will live after any staging folder is swapped in."""
    return None if name_or_path is None else final_location(name_or_path)


def _training_metadata(
    method, data, model_args, data_args, args, references, total_steps, world_size
) -> dict[str, Any]:
    """``config.training``: how the model was trained (method, its config, references, data and class subset)."""
    images = data.images if isinstance(data, ImageTextData) else data
    return {
        **method.metadata(),
        "modality": method.modality,
        "references": {name: ref.metadata() for name, ref in references.items()},
        "dataset": data_args.dataset if data.source == "in-memory" else data.source,
        "class_subset": images.class_subset,
        "class_names": data.class_names,
        "num_train_samples": len(data),
        "steps": total_steps,
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "optimizer": args.optimizer,
        "lr_scheduler_type": args.lr_scheduler_type,
        "reference_targets": args.reference_targets,
        "init_from": _recorded_path(model_args.init_from),
        **({"text_init_from": _recorded_path(model_args.text_init_from)} if method.modality == "pair" else {}),
        "freeze_backbone": model_args.freeze_backbone,
        "freeze_text_backbone": model_args.freeze_text_backbone,
        "init_from_independent": model_args.init_from_independent,
        # the checkpoint whose weights this model started from (the model card shows it)
        "started_from": _recorded_path(model_args.independent_model) if model_args.init_from_independent else None,
        "trained_against": _trained_against(references.get("old")),
        "bt2_hf_trainer": "accelerate",
        "world_size": world_size,
    }
