"""One training loop on accelerate for every method and every tower (image towers, text towers, image–text pairs).

:func:`train` is the Python entry point (``bt2 train`` and the demo call it); it takes the three run-argument
dataclasses and a method config, optionally in-memory data and an evaluation hook, and returns the directory of the
saved model. It runs in phases, each a function of its own: :func:`prepare_run` (accelerator, data, frozen
references, model, processor, reference targets, prototypes, optimisation state, the run record and any resume),
:func:`run_epoch` (the optimizer steps of one epoch, with logging and checkpoints), :func:`evaluate` (the caller's
hook) and :func:`save_trained_model`. What differs between towers is only what a batch feeds the model
(``pixel_values`` and/or tokens) and which frozen reference embeds what (a method's
:meth:`~bt2_hf.methods.CompatibilityMethod.batch_targets` hook): the batch order, checkpoints, exact resume,
multi-process training, mixed precision and the card are one code path. Nothing is written before every input has
been checked and the references and prototypes are ready, so a bad input leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compatibility import trained_against
from ..data.datasets import ImageClassificationData
from ..data.image_text import ImageTextData, tokenize_texts
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
from .factory import backbone_frozen, build_model, match_processor_to_data, set_train_mode, towers_of
from .feature_cache import FROZEN_FEATURES, content_hash
from .inputs import PRECOMPUTE_EPOCH, PROTOTYPE_EPOCH, augmentation_seed, load_train_data, make_loader
from .prototypes import compute_class_means
from .references import FrozenReference
from .towers import TOWER_DIRS, BT2PairModel, is_pair_directory

logger = logging.getLogger(__name__)

EvalFn = Callable[[BT2Model, Any, int], "dict[str, float] | None"]
LOG_FILE = "training_log.json"
LOG_CSV_FILE = "training_log.csv"

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


@dataclass
class TrainingRun:
    """Everything a run prepares before its first step, and its progress (what :func:`run_epoch` advances).

    Built by :func:`prepare_run`; the phases after it read and update it. ``model`` is the accelerate-prepared
    module (``forward_model`` the same, compiled when asked); ``precomputed`` holds the frozen references' stored
    targets by role; ``text_features`` a frozen text backbone's pooled output per caption, when stored.
    """

    args: BT2TrainingArguments
    model_args: ModelArguments
    data_args: DataArguments
    method: CompatibilityMethod
    accelerator: Any
    output_dir: Path
    data: ImageClassificationData | ImageTextData
    references: dict[str, FrozenReference]
    model: torch.nn.Module
    forward_model: torch.nn.Module
    input_transform: ModelInputTransform | None
    tokens: dict[str, torch.Tensor] | None
    text_features: torch.Tensor | None
    augmentation: BatchAugmentation
    loader: Any
    steps_per_epoch: int
    total_steps: int
    precomputed: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    record: dict[str, Any] = field(default_factory=dict)  # run.json: the run's id and settings
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    first_loss: float | None = None  # the loss divergence is judged against (kept in the log across a resume)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def image_data(self) -> ImageClassificationData:
        """The images of the rows (image towers: the data itself; text towers: the captions' paired images)."""
        return self.data.images if isinstance(self.data, ImageTextData) else self.data

    @property
    def has_labels(self) -> bool:
        return not isinstance(self.data, ImageTextData) or self.data.has_labels

    @property
    def stop_at(self) -> int:
        """The step this call of :func:`train` stops at (``stop_after_steps`` ends a run early, resumable)."""
        stop = self.args.stop_after_steps
        return min(self.total_steps, stop) if stop else self.total_steps

    @property
    def text_feature_key(self) -> str:
        return (
            "text_backbone_output"
            if "image" in towers_of(self.accelerator.unwrap_model(self.model))
            else ("backbone_output")
        )


class _NoGradPass:
    """Passes over the whole training set without gradients (prototypes, stored reference targets): batches of 4× the
    training batch, each with its own reproducible augmentation when asked."""

    def __init__(self, image_data, batch_size: int, accelerator, args: BT2TrainingArguments, augmentation):
        self.image_data, self.batch_size, self.accelerator = image_data, 4 * batch_size, accelerator
        self.args, self.augmentation = args, augmentation

    def __call__(self, epoch: int, augment: bool, sharded: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        """(augmented images, labels, rows) over the training set, this process's shard only when ``sharded``."""
        loader = make_loader(self.image_data, self.batch_size, self.accelerator, self.args, self.args.seed,
                             sharded=sharded, shuffle=False, drop_last=False)  # fmt: skip
        for batch_index, batch in enumerate(loader.iter_epoch(epoch)):
            params = None
            if augment:
                seed = augmentation_seed(self.args.seed, epoch, batch_index)
                params = self.augmentation.sample(batch["global_batch_size"], seed).slice(
                    batch["global_offset"], batch["global_offset"] + len(batch["labels"])
                )
            yield self.augmentation(batch["images"], params), batch["labels"], batch["index"]


def _start_accelerator(args: BT2TrainingArguments, output_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    # train() may run several times in one Python process (the demo trains old → independent → bt2). accelerate keeps
    # its mixed-precision setting in a process-wide singleton; reset it (not the process group) so that every call
    # gets the precision it asks for.
    AcceleratorState._reset_state(reset_partial_state=False)
    # accelerate only starts a gloo process group on CPU when told cpu=True; under torchrun on a machine without
    # CUDA that is what the user wants (otherwise every process silently trains alone).
    cpu_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu_distributed,
        mixed_precision=args.mixed_precision,
        log_with=[t.strip() for t in args.log_with.split(",")] if args.log_with else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )


def _load_references(
    method: CompatibilityMethod,
    model_args: ModelArguments,
    data_args: DataArguments,
    data,
    device,
    channels_last: bool,
) -> dict[str, FrozenReference]:
    """The method's frozen references, loaded and checked against the method and the data (modality, widths)."""
    missing = [name for name in method.requires if not getattr(model_args, f"{name}_model")]
    if missing:
        raise ValueError(
            f"Method {method.name!r} needs the frozen {' and '.join(missing)} model(s); pass "
            + ", ".join(f"--{name}_model <checkpoint>" for name in missing)
            + "."
        )
    references = {
        name: FrozenReference.load(name, path, revision, device=device, channels_last=channels_last)
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
    old_column = data.old_targets if isinstance(data, ImageTextData) else None
    if old_column is not None and "old" in references and old_column.shape[1] != references["old"].embedding_dim:
        raise ValueError(
            f"The column {data_args.old_target_column} holds {old_column.shape[1]}-d old targets, but the old model "
            f"{references['old'].name_or_path} embeds into {references['old'].embedding_dim} dims."
        )
    independent = references.get("independent")
    if independent is not None and independent.model.config.num_classes not in (0, None, data.num_classes):
        logger.warning(
            "The independent model was trained with %d classes, this data has %d.",
            independent.model.config.num_classes,
            data.num_classes,
        )
    return references


def _uses_channels_last(args: BT2TrainingArguments, model_args: ModelArguments, device: torch.device) -> bool:
    if args.channels_last is not None:
        return args.channels_last
    from ..backbones import get_backbone_class

    backbone_class = get_backbone_class(model_args.backbone_type)
    return backbone_class.prefers_channels_last(model_args.backbone_config or {}) and device.type == "cuda"


def _reference_tables(
    references: dict[str, FrozenReference], data, args: BT2TrainingArguments, passes: _NoGradPass, accelerator
) -> dict[str, torch.Tensor]:
    """The frozen references' targets stored once for every training row, by role.

    A given old-target column is used as it is. Captions are never augmented, so a frozen text reference gives one
    embedding per caption: each is embedded once. With ``reference_targets="precomputed"`` (for every role, or for the
    roles it names), each process also embeds every image once (a single random augmentation per image, as the
    research code); the old model's table then also gives the prototypes W_o. Cheaper than online targets whenever a run sees more images than the data set holds
    (steps × batch > N). Image tables come from the process's feature cache when a run before this one computed the
    same (same reference weights, images, augmentation, batching, precision and device).
    """
    device = accelerator.device
    precomputed: dict[str, torch.Tensor] = {}
    old_column = data.old_targets if isinstance(data, ImageTextData) else None
    if old_column is not None and "old" in references:
        precomputed["old"] = old_column.to(device)
    for name, ref in references.items():
        if name in precomputed or (ref.modality == "image" and args.reference_target_mode(name) != "precomputed"):
            continue

        def compute(ref: FrozenReference = ref) -> torch.Tensor:
            table = torch.zeros(len(data), ref.embedding_dim, device=device)
            with accelerator.autocast():
                if ref.modality == "image":
                    for images, _, rows in passes(PRECOMPUTE_EPOCH, True, False):
                        table[rows.to(device)] = ref.embed(images)
                else:
                    for start in range(0, len(data), passes.batch_size):
                        rows = torch.arange(start, min(start + passes.batch_size, len(data)))
                        table[rows.to(device)] = ref.embed_rows(rows)
            return table

        image_data = passes.image_data
        if ref.modality == "image" and image_data.in_memory:
            key = ("reference_table", ref.model.config.fingerprint, content_hash([image_data.images, image_data.labels]),
                   passes.augmentation.padding, passes.augmentation.horizontal_flip, args.seed, passes.batch_size,
                   str(accelerator.mixed_precision), str(device))  # fmt: skip
            precomputed[name] = FROZEN_FEATURES.get_or_compute(key, compute)
        else:
            precomputed[name] = compute()
    return precomputed


def _prototypes(
    method: CompatibilityMethod, references, precomputed, data, args, passes: _NoGradPass, accelerator, has_labels
) -> torch.Tensor | None:
    """W_o: the class means of the prototype reference's embeddings of the training images (when the method uses
    them and the data has labels)."""
    if not (method.uses_prototypes and has_labels):
        return None
    ref = references[method.prototype_reference]
    table = precomputed.get(method.prototype_reference) if ref.modality == "image" else None
    has_column = isinstance(data, ImageTextData) and data.old_targets is not None
    image_data = passes.image_data
    if table is not None and (has_column or args.prototype_augmentation):
        # The stored targets are the reference's word on every training image (one augmented view each, or the
        # given column): W_o is their class means, and no second pass over the data is needed.
        return compute_class_means([(table, image_data.labels)], data.num_classes, lambda x: x, table.shape[1],
                                   accelerator.device, class_names=data.class_names)  # fmt: skip
    with accelerator.autocast():
        return compute_class_means(
            ((images, labels) for images, labels, _ in passes(PROTOTYPE_EPOCH, args.prototype_augmentation, True)),
            data.num_classes,
            ref.embed,
            ref.embedding_dim,
            accelerator.device,
            reduce=(lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else None,
            class_names=data.class_names,
        )


def _frozen_text_features(tower: BT2Model, tokens: dict, chunk: int, device, accelerator) -> torch.Tensor:
    """The frozen (eval-mode) text backbone's pooled output for every caption, ``(num_captions, dim)``, from the
    process's feature cache when a run before this one computed it (same weights + tokenizer, captions, precision,
    device): the stages of a pipeline that share a frozen pretrained encoder run it once."""
    backbone = tower.backbone
    key = (
        "text_features",
        combine_fingerprint(fingerprint_state_dict(backbone.state_dict()), tower.processor),
        content_hash([tokens[name] for name in sorted(tokens)]) + "|" + ",".join(sorted(tokens)),
        str(accelerator.mixed_precision),
        str(device),
    )

    @torch.no_grad()
    def compute() -> torch.Tensor:
        was_training = backbone.training
        backbone.eval()
        count = len(next(iter(tokens.values())))
        parts = []
        with accelerator.autocast():
            for start in range(0, count, chunk):
                inputs = {k: v[start : start + chunk].to(device) for k, v in tokens.items()}
                parts.append(backbone(**inputs).float())
        backbone.train(was_training)
        return torch.cat(parts)

    return FROZEN_FEATURES.get_or_compute(key, compute)


def _open_run(run_parts: dict[str, Any], model_args, data_args, args, method, accelerator, output_dir: Path):
    """Check a resume, write the run record (run.json), load the checkpoint to resume from; returns (record, step,
    history)."""
    model, optimizer, scheduler = run_parts["model"], run_parts["optimizer"], run_parts["scheduler"]
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
    record = read_run(output_dir)
    global_step, history = 0, []
    if resume_path is not None:
        state = load_checkpoint(accelerator, resume_path, model=model, optimizer=optimizer, scheduler=scheduler)
        global_step = int(state["global_step"])
        history = list(state.get("log_history", []))
        logger.info("Resumed from %s at step %d", resume_path, global_step)
    if accelerator.trackers or args.log_with:
        accelerator.init_trackers(
            "bt2_hf", config={**dataclasses.asdict(args), **method.config.to_dict(), "method": method.name}
        )
    return record, global_step, history


def prepare_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: BT2TrainingArguments,
    method: CompatibilityMethod,
    train_data: Any = None,
) -> TrainingRun:
    """Phase 1: everything before the first step, checked before anything is written.

    Starts the accelerator, loads the rows and the frozen references, builds the model and matches its processor to
    the data, stores the references' targets and the prototypes W_o, builds the optimiser and schedule, then writes
    the run record and loads the checkpoint to resume from (if any). Arguments as :func:`train`'s.

    Returns:
        :class:`TrainingRun`: the prepared run, at step 0 or at the resumed step.
    """
    from accelerate.utils import set_seed

    _check_output_dir(args)
    output_dir = Path(args.output_dir)
    accelerator = _start_accelerator(args, output_dir)
    device = accelerator.device
    set_seed(args.seed)
    data = load_train_data(data_args, train_data, args.seed, method)
    image_data = data.images if isinstance(data, ImageTextData) else data
    channels_last = _uses_channels_last(args, model_args, device)
    references = _load_references(method, model_args, data_args, data, device, channels_last and device.type == "cuda")
    set_seed(args.seed)  # the model's initialisation does not depend on what was loaded before
    model = build_model(model_args, method, references, data.num_classes)
    towers = towers_of(model)
    input_transform = tokens = None  # tokens: the text tower's captions, tokenised once (rows picked per batch)
    if "image" in towers:
        match_processor_to_data(towers["image"], image_data, model_args)
        input_transform = ModelInputTransform.from_processor(towers["image"].processor, channels_last=channels_last)
    if "text" in towers:
        tokens = tokenize_texts(towers["text"].processor, data.texts, data_args.max_text_length)
    has_images = not isinstance(data, ImageTextData) or data.has_images
    augmentation = (
        BatchAugmentation(data_args.augment_padding, data_args.horizontal_flip)
        if has_images
        else BatchAugmentation(0, False)  # 1-pixel placeholders: nothing to augment
    )
    batch_size = args.per_device_train_batch_size
    loader = make_loader(image_data, batch_size, accelerator, args, args.seed, sharded=True, shuffle=True,
                         drop_last=True)  # fmt: skip
    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"One epoch has {len(loader)} batches, fewer than gradient_accumulation_steps="
            f"{args.gradient_accumulation_steps}; lower the batch size or the accumulation."
        )
    total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs
    passes = _NoGradPass(image_data, batch_size, accelerator, args, augmentation)
    has_labels = not isinstance(data, ImageTextData) or data.has_labels
    read = {name: ref for name, ref in references.items() if method.reads_targets_of(name)}
    precomputed = _reference_tables(read, data, args, passes, accelerator)
    method.prepare(_prototypes(method, references, precomputed, data, args, passes, accelerator, has_labels))
    precomputed = method.prepare_targets(precomputed, image_data.labels if has_labels else None)

    set_train_mode(model, model_args.freeze_backbone, model_args.freeze_text_backbone)
    text_features = None  # a frozen text backbone's pooled output per caption, when stored (see the argument)
    if (
        tokens is not None
        and model_args.cache_frozen_text_features
        and backbone_frozen(towers["text"], model_args.freeze_backbone, model_args.freeze_text_backbone)
    ):
        text_features = _frozen_text_features(towers["text"], tokens, 4 * batch_size, device, accelerator)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args, device)
    warmup = args.warmup_steps + int(round(args.warmup_epochs * steps_per_epoch))
    scheduler = build_lr_scheduler(optimizer, args.lr_scheduler_type, warmup, total_steps)
    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step it once per
    # process). Checkpoints save it as JSON (checkpointing.py), never through accelerate's pickled custom state.
    model, optimizer = accelerator.prepare(model, optimizer)
    forward_model = torch.compile(model) if args.torch_compile else model
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    record, global_step, history = _open_run(parts, model_args, data_args, args, method, accelerator, output_dir)
    return TrainingRun(
        args=args, model_args=model_args, data_args=data_args, method=method, accelerator=accelerator,
        output_dir=output_dir, data=data, references=references, model=model, forward_model=forward_model,
        input_transform=input_transform, tokens=tokens, text_features=text_features, augmentation=augmentation,
        loader=loader, steps_per_epoch=steps_per_epoch, total_steps=total_steps, precomputed=precomputed,
        optimizer=optimizer, scheduler=scheduler, record=record, global_step=global_step, history=history,
        first_loss=next((float(e["loss"]) for e in history if "loss" in e), None),
    )  # fmt: skip


def _micro_batch_losses(run: TrainingRun, batch: dict[str, torch.Tensor], epoch: int, batch_index: int):
    """The forward pass and named losses of one micro-batch (augmentation, the method's targets, the model inputs)."""
    params = run.augmentation.sample(batch["global_batch_size"], augmentation_seed(run.args.seed, epoch, batch_index))
    params = params.slice(batch["global_offset"], batch["global_offset"] + len(batch["labels"]))
    images = run.augmentation(batch["images"], params)
    labels = batch["labels"] if run.has_labels else None
    with run.accelerator.autocast():
        targets = run.method.batch_targets(run.references, run.precomputed, images, batch["index"])
        inputs = {} if run.input_transform is None else {"pixel_values": run.input_transform(images)}
        if run.text_features is not None:
            inputs[run.text_feature_key] = run.text_features[batch["index"].to(run.device)]
        elif run.tokens is not None:
            inputs.update({k: v[batch["index"]].to(run.device) for k, v in run.tokens.items()})
        outputs = run.forward_model(**inputs)
        return run.method.compute_loss(outputs, targets, labels)


def _optimizer_step(run: TrainingRun, batches: Iterator[dict], epoch: int, batch_index: int) -> dict[str, Any]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; refuses a non-finite or exploding loss
    before it reaches the weights. Returns the step's mean losses (tensors)."""
    accumulation = run.args.gradient_accumulation_steps
    step_losses: dict[str, torch.Tensor] = {}
    for micro in range(accumulation):
        losses = _micro_batch_losses(run, next(batches), epoch, batch_index + micro)
        loss = sum(value for key, value in losses.items() if key.endswith("_loss"))
        # Only the last micro-batch synchronises gradients across processes.
        context = run.accelerator.no_sync(run.model) if micro < accumulation - 1 else contextlib.nullcontext()
        with context:
            run.accelerator.backward(loss / accumulation)
        for key, value in losses.items():
            step_losses[key] = step_losses.get(key, 0.0) + value.detach().float() / accumulation
        step_losses["loss"] = step_losses.get("loss", 0.0) + loss.detach().float() / accumulation
    parameters = run.model.parameters()
    if run.args.max_grad_norm:
        grad_norm = run.accelerator.clip_grad_norm_(parameters, run.args.max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    _check_step(run, step_losses, grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.global_step += 1
    return step_losses


def _check_step(run: TrainingRun, step_losses: dict[str, torch.Tensor], grad_norm) -> None:
    # One host sync per step: a NaN/inf loss term or gradient stops the run before it reaches the weights.
    device, step, learning_rate = run.device, run.global_step + 1, run.scheduler.get_last_lr()[0]
    checked = {**step_losses, "grad_norm": torch.as_tensor(grad_norm, dtype=torch.float32, device=device)}
    checked_values = torch.stack([v.reshape(()).to(device) for v in checked.values()]).tolist()
    if not all(math.isfinite(v) for v in checked_values):
        term, value = _first_non_finite(checked)
        raise FloatingPointError(
            f"Training diverged at step {step}: {term} = {value}. Nothing was saved for this step; earlier "
            f"checkpoints are intact. Lower the learning rate (now {learning_rate:.3g}) or check the data."
        )
    # A finite but exploding loss diverges too: far above where this run started, it stops, saving nothing.
    step_loss = checked_values[list(checked).index("loss")]
    if run.first_loss is None:
        run.first_loss = step_loss
    elif step_loss > DIVERGENCE_FACTOR * max(run.first_loss, 0.1):
        raise FloatingPointError(
            f"Training diverged at step {step}: loss = {step_loss:.4g}, more than {DIVERGENCE_FACTOR:g}× the first "
            f"logged loss ({run.first_loss:.4g}). Nothing was saved for this step; earlier checkpoints are intact. "
            f"Lower the learning rate (now {learning_rate:.3g})."
        )


@dataclass
class _LogWindow:
    """The losses and images seen since the last log entry."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, step_losses: dict[str, torch.Tensor], images: int) -> None:
        for key, value in step_losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images


def _log(run: TrainingRun, window: _LogWindow, progress) -> None:
    """Write one log entry: the window's mean losses (over every process), learning rate and images/s."""
    keys = sorted(window.sums)
    stacked = torch.stack([window.sums[k] / window.steps for k in keys])
    stacked = run.accelerator.reduce(stacked, "mean") if run.accelerator.num_processes > 1 else stacked
    values = dict(zip(keys, stacked.tolist()))
    for key, value in values.items():
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{key} became {value} at step {run.global_step}; lower the learning rate or check the data."
            )
    elapsed = time.perf_counter() - window.start
    entry = {"step": run.global_step, "epoch": round(run.global_step / run.steps_per_epoch, 4),
             "learning_rate": run.scheduler.get_last_lr()[0], **values,
             "images_per_second": window.images / max(elapsed, 1e-9)}  # fmt: skip
    run.history.append(entry)
    run.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=run.global_step)
    progress.set_postfix(loss=f"{values['loss']:.4f}")
    if run.accelerator.is_main_process:
        _write_logs(run.output_dir, run.history)


def run_epoch(run: TrainingRun, epoch: int, progress, eval_fn: EvalFn | None = None) -> None:
    """Phase 2: the optimizer steps of one epoch from where the run stands (a resume starts mid-epoch), with log
    entries every ``logging_steps``, the evaluation hook at the epoch's end and checkpoints every ``save_steps``.

    Args:
        run (:class:`TrainingRun`): the prepared run; its ``global_step`` and ``history`` advance.
        epoch (`int`): the epoch (0-based); its batch order and augmentations depend only on the seed and the epoch.
        progress: a tqdm bar (updated once per step).
        eval_fn (`callable`, *optional*): see :func:`train`.
    """
    args, accumulation = run.args, run.args.gradient_accumulation_steps
    first_batch = (run.global_step % run.steps_per_epoch) * accumulation
    batches = run.loader.iter_epoch(epoch, start_batch=first_batch)
    batch_index = first_batch
    window = _LogWindow()
    images_per_step = args.per_device_train_batch_size * accumulation * run.accelerator.num_processes
    while run.global_step < run.stop_at and run.global_step < (epoch + 1) * run.steps_per_epoch:
        step_losses = _optimizer_step(run, batches, epoch, batch_index)
        batch_index += accumulation
        progress.update(1)
        window.add(step_losses, images_per_step)
        if run.global_step % args.logging_steps == 0 or run.global_step == run.stop_at:
            _log(run, window, progress)
            window = _LogWindow()
        if run.global_step % run.steps_per_epoch == 0 and eval_fn is not None:
            evaluate(run, eval_fn)
        if (args.save_steps and run.global_step % args.save_steps == 0) or run.global_step == run.stop_at < (
            run.total_steps
        ):
            _check_finite_model(run.model, run.global_step)
            save_checkpoint(
                run.accelerator, run.output_dir, run.global_step,
                {"global_step": run.global_step, "total_steps": run.total_steps, "log_history": run.history},
                args.save_total_limit, run_id=run.record["run_id"], model=run.model, optimizer=run.optimizer,
                scheduler=run.scheduler,
            )  # fmt: skip


def evaluate(run: TrainingRun, eval_fn: EvalFn) -> dict[str, float] | None:
    """Phase 3: the caller's evaluation hook on the unwrapped model (eval mode), its numbers logged as ``eval_*``."""
    unwrapped = run.accelerator.unwrap_model(run.model)
    unwrapped.eval()
    epoch = run.global_step // run.steps_per_epoch
    metrics = eval_fn(unwrapped, run.accelerator, epoch)
    set_train_mode(unwrapped, run.model_args.freeze_backbone, run.model_args.freeze_text_backbone)
    if metrics:
        entry = {"step": run.global_step, "epoch": epoch, **{f"eval_{k}": float(v) for k, v in metrics.items()}}
        run.history.append(entry)
        run.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=run.global_step)
        if run.accelerator.is_main_process:
            _write_logs(run.output_dir, run.history)
    return metrics


def save_trained_model(run: TrainingRun) -> Path:
    """Phase 4: record how the model was trained (never compatibility: only ``bt2 verify`` measures that), check its
    weights and save it (a pair: both towers), then close the run record."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    unwrapped.eval()
    metadata = _training_metadata(run.method, run.data, run.model_args, run.data_args, run.args, run.references,
                                  run.total_steps, accelerator.num_processes)  # fmt: skip
    for tower, tower_model in towers_of(unwrapped).items():
        # a pair's tower records which one it is and where its partner is saved
        pair = {"pair": {"tower": tower, "partner": TOWER_DIRS[{"image": "text", "text": "image"}[tower]]}}
        tower_model.config.training = {**metadata, **(pair if isinstance(unwrapped, BT2PairModel) else {})}
        # Training records what it trained against, never compatibility: only `bt2 verify` measures and writes that.
        tower_model.config.compatible_with = []
    _check_finite_model(unwrapped, run.global_step)
    accelerator.wait_for_everyone()
    # get_state_dict gathers full parameters under FSDP (every process takes part); the fingerprint covers them.
    full_state_dict = accelerator.get_state_dict(run.model)
    unwrapped.save_pretrained(run.output_dir, is_main_process=accelerator.is_main_process, state_dict=full_state_dict)
    if accelerator.is_main_process:
        _write_logs(run.output_dir, run.history)
        finish_run(run.output_dir, run.record)
        logger.info("Saved the %s model to %s (checkpoints: %d)", run.method.name, run.output_dir,
                    len(list_checkpoints(run.output_dir)))  # fmt: skip
    return run.output_dir


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
    method = get_method(training_args.method, method_config)
    run = prepare_run(model_args, data_args, training_args, method, train_data)
    accelerator, args = run.accelerator, training_args
    progress = tqdm(total=run.total_steps, initial=run.global_step, desc=f"train {method.name}",
                    disable=args.disable_tqdm or not accelerator.is_local_main_process)  # fmt: skip
    accumulation = args.gradient_accumulation_steps
    logger.info(
        "Training %s: %d samples, %d classes, %d steps (%d per epoch), global batch %d",
        method.name, len(run.data), run.data.num_classes, run.total_steps, run.steps_per_epoch,
        args.per_device_train_batch_size * accelerator.num_processes * accumulation,
    )  # fmt: skip
    while run.global_step < run.stop_at:
        run_epoch(run, run.global_step // run.steps_per_epoch, progress, eval_fn)
    progress.close()
    if run.global_step < run.total_steps:
        logger.info("Stopped at step %d of %d; resume with --resume_from_checkpoint latest.", run.global_step,
                    run.total_steps)  # fmt: skip
        accelerator.end_training()
        return run.output_dir
    save_trained_model(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.output_dir


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
