"""One training stage of a pipeline, declared once: its training arguments, and when a finished stage may be reused.

A pipeline (the demo, a series of updates) is a list of stages, each one call of :func:`bt2_hf.training.train`. A
:class:`StageSpec` says what a stage trains (backbone, method, references, data, budget); :func:`stage_arguments`
turns it into the trainer's ``ModelArguments`` / ``DataArguments`` / ``BT2TrainingArguments``, and :func:`run_stage`
trains it, or reuses the model already in its ``output_dir`` when, and only when, that model was trained with the same
settings. What a checkpoint was trained with is read from its ``config.json`` (the architecture, and
``config.training``, which the trainer writes), never assumed from the directory's name; a stage whose settings
differ is refused with the differing settings and the fix, or retrained when the caller asks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The fix named by a refusal when the caller gives none (a CLI names its own flags).
DEFAULT_REUSE_FIX = "use a new output directory, or retrain the stage (reuse=False, or retrain_changed=True)"


class StageSettingsError(ValueError):
    """A finished stage in the output directory was trained with other settings than the pipeline asks for now."""


@dataclass(frozen=True)
class StageSpec:
    """What one stage trains: everything :func:`bt2_hf.training.train` is given, in one flat declaration.

    Fields left at ``None`` keep the trainer's defaults (:mod:`bt2_hf.training.arguments`).

    Args:
        name (`str`): the stage's name in logs and messages (``"old"``, ``"bt2"``, ``"v2-independent"``).
        output_dir (`str` or `Path`): where the model is saved (and looked for when reusing).
        method (`str`): the registered training method (``independent``, ``bct``, ``bt2`` …).
        backbone_type (`str`): a registered backbone (``small_cnn``, ``hf_vision`` …).
        backbone_config (`dict`): its config (``{}`` for a backbone started from ``init_from`` with its own config).
        steps (`int`): optimizer steps (``max_steps``).
        seed (`int`): seed of initialisation, data order and augmentation.
        batch_size (`int`): images per process and step.
        learning_rate (`float`): peak learning rate.
        warmup_steps (`int`, *optional*, defaults to 0): linear warm-up steps.
        embedding_dim (`int`, *optional*): the head's width (``None`` for BT², whose width follows from its method
            config).
        head_nonlinearity (`str`, *optional*): the head's nonlinearity.
        logit_scale (`float`, *optional*): fixed factor on the training classifier's logits.
        old_model, independent_model (`str`, *optional*): the frozen reference checkpoints.
        image_model (`str`, *optional*): the frozen image model an ``independent_text`` tower is aligned with.
        old_embedding_dim (`int`, *optional*): the old model's prefix width.
        init_from_independent (`bool`, *optional*, defaults to `False`): start from ``independent_model``'s weights.
        init_from (`str`, *optional*): start the backbone from this local pretrained checkpoint (a text encoder).
        freeze_backbone (`bool`, *optional*): train the head only.
        head_learning_rate (`float`, *optional*): the head's peak learning rate, when it differs from the backbone's.
        optimizer (`str`, *optional*): ``adam``, ``adamw`` or ``sgd``.
        weight_decay (`float`, *optional*): weight decay (not recorded in ``config.training``, so not compared when
            reusing).
        dataset, data_dir (`str`, *optional*): the data set to load when no in-memory data is given to
            :func:`run_stage` (``dataset`` also names in-memory data in the checkpoint's record).
        class_subset (`str`, *optional*): train on these classes only (``"0-4"``).
        max_train_samples (`int`, *optional*): class-balanced training images.
        horizontal_flip (`bool`, *optional*): random horizontal flips (off where left and right matter, e.g. scenes
            whose captions name positions).
        augment_padding (`int`, *optional*): zero padding before the random crop (0: no crop).
        method_config (`dict`, *optional*): the method's hyper-parameters.
        logging_steps (`int`, *optional*): log the mean losses every N steps.
        mixed_precision (`str`, *optional*): ``no``, ``fp16`` or ``bf16``.
        data_on_device (`bool`, *optional*): keep the training tensors on the device (in-memory data, no workers).
        reference_targets (`str`, *optional*): ``online`` (the frozen references embed every augmented batch) or
            ``precomputed`` (each training image once, before training).
        disable_tqdm (`bool`, *optional*, defaults to `False`): no progress bar.
    """

    name: str
    output_dir: str | Path
    method: str
    backbone_type: str
    backbone_config: Mapping[str, Any]
    steps: int
    seed: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 0
    embedding_dim: int | None = None
    head_nonlinearity: str | None = None
    logit_scale: float | None = None
    old_model: str | None = None
    old_embedding_dim: int | None = None
    independent_model: str | None = None
    image_model: str | None = None
    init_from_independent: bool = False
    init_from: str | None = None
    freeze_backbone: bool | None = None
    head_learning_rate: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    dataset: str | None = None
    data_dir: str | None = None
    class_subset: str | None = None
    max_train_samples: int | None = None
    horizontal_flip: bool | None = None
    augment_padding: int | None = None
    method_config: Mapping[str, Any] | None = field(default=None)
    logging_steps: int | None = None
    mixed_precision: str | None = None
    data_on_device: bool | None = None
    reference_targets: str | None = None
    disable_tqdm: bool = False


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that are set (``None`` leaves the trainer's default)."""
    return {key: value for key, value in values.items() if value is not None}


def stage_arguments(spec: StageSpec):
    """The trainer's arguments of one stage.

    Returns:
        `tuple`: ``(ModelArguments, DataArguments, BT2TrainingArguments, method_config)``, the first four arguments of
        :func:`bt2_hf.training.train`.
    """
    from ..training import BT2TrainingArguments, DataArguments, ModelArguments

    model_args = ModelArguments(
        backbone_type=spec.backbone_type,
        backbone_config=json.dumps(dict(spec.backbone_config)),
        init_from_independent=spec.init_from_independent,
        **_given(
            embedding_dim=spec.embedding_dim,
            head_nonlinearity=spec.head_nonlinearity,
            logit_scale=spec.logit_scale,
            old_model=spec.old_model,
            old_embedding_dim=spec.old_embedding_dim,
            independent_model=spec.independent_model,
            image_model=spec.image_model,
            init_from=spec.init_from,
            freeze_backbone=spec.freeze_backbone,
        ),
    )
    data_args = DataArguments(
        **_given(
            dataset=spec.dataset,
            data_dir=spec.data_dir,
            class_subset=spec.class_subset,
            max_train_samples=spec.max_train_samples,
            horizontal_flip=spec.horizontal_flip,
            augment_padding=spec.augment_padding,
        )
    )
    training_args = BT2TrainingArguments(
        output_dir=str(spec.output_dir),
        method=spec.method,
        seed=spec.seed,
        max_steps=spec.steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        # a stage owns its output_dir: a stage that is not reused is trained again from scratch
        overwrite_output_dir=True,
        disable_tqdm=spec.disable_tqdm,
        **_given(
            logging_steps=spec.logging_steps,
            mixed_precision=spec.mixed_precision,
            data_on_device=spec.data_on_device,
            reference_targets=spec.reference_targets,
            head_learning_rate=spec.head_learning_rate,
            optimizer=spec.optimizer,
            weight_decay=spec.weight_decay,
        ),
    )
    method_config = dict(spec.method_config) if spec.method_config is not None else None
    return model_args, data_args, training_args, method_config


def _fingerprint_of(checkpoint: str) -> str | None:
    """The fingerprint in a local checkpoint's ``config.json`` (``None`` for a Hub id or a missing file)."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint")


def stage_differences(spec: StageSpec, checkpoint_dir: str | Path | None = None) -> list[str]:
    """The settings of ``spec`` that the model saved in ``checkpoint_dir`` was *not* trained with.

    Compared, from the checkpoint's ``config.json``: the architecture (backbone type, every key of the spec's
    ``backbone_config``, the head's width and nonlinearity, the logit scale) and ``config.training`` (method, steps,
    seed, batch size, learning rate, start from the independent model, class subset, every key of the spec's
    ``method_config``, and, when the spec sets them, the head's learning rate, the optimizer, the pretrained checkpoint
    it started from and whether its backbone was frozen), and the frozen references it trained against (the old,
    independent and image models' fingerprints now on disk, so a stage is not reused after a model it depends on was
    retrained).

    Args:
        spec (:class:`StageSpec`): what the pipeline asks for now.
        checkpoint_dir (`str` or `Path`, *optional*): defaults to ``spec.output_dir``.

    Returns:
        `list[str]`: one ``"<setting>: saved <value>, asked <value>"`` per difference; empty when the model matches.
    """
    from ..data import parse_class_subset

    checkpoint_dir = Path(checkpoint_dir if checkpoint_dir is not None else spec.output_dir)
    saved = json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8"))
    training = saved.get("training") or {}
    expected: dict[str, tuple[Any, Any]] = {
        "backbone_type": (saved.get("backbone_type"), spec.backbone_type),
        "method": (training.get("method"), spec.method),
        "max_steps": (training.get("steps"), spec.steps),
        "seed": (training.get("seed"), spec.seed),
        "batch_size": (training.get("per_device_train_batch_size"), spec.batch_size),
        "learning_rate": (training.get("learning_rate"), spec.learning_rate),
        "init_from_independent": (training.get("init_from_independent", False), spec.init_from_independent),
        "class_subset": (training.get("class_subset"), parse_class_subset(spec.class_subset)),
    }
    if spec.logit_scale is not None:
        expected["logit_scale"] = (saved.get("logit_scale"), spec.logit_scale)
    if spec.embedding_dim is not None:
        expected["embedding_dim"] = (saved.get("embedding_dim"), spec.embedding_dim)
    if spec.head_nonlinearity is not None:
        expected["head_nonlinearity"] = (saved.get("head_nonlinearity"), spec.head_nonlinearity)
    for key in ("head_learning_rate", "optimizer", "init_from", "freeze_backbone"):
        if getattr(spec, key) is not None:
            expected[key] = (training.get(key), getattr(spec, key))
    saved_backbone = saved.get("backbone_config") or {}
    for key, value in spec.backbone_config.items():
        # JSON has no tuples: (16, 32) is saved as [16, 32]
        expected[f"backbone_config.{key}"] = (saved_backbone.get(key), json.loads(json.dumps(value)))
    saved_method = training.get("method_config") or {}
    for key, value in (spec.method_config or {}).items():
        expected[f"method_config.{key}"] = (saved_method.get(key), json.loads(json.dumps(value)))
    references = training.get("references") or {}
    for role, checkpoint in (("old", spec.old_model), ("independent", spec.independent_model),
                             ("image", spec.image_model)):  # fmt: skip
        if checkpoint is None:
            continue
        now = _fingerprint_of(checkpoint)
        if now is not None:
            expected[f"{role}_model fingerprint"] = ((references.get(role) or {}).get("fingerprint"), now)
    return [f"{key}: saved {old!r}, asked {new!r}" for key, (old, new) in expected.items() if old != new]


def is_finished(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a saved model (the trainer writes ``config.json`` only when a run completes)."""
    return (Path(output_dir) / "config.json").is_file()


def run_stage(
    spec: StageSpec,
    *,
    train_data: Any = None,
    reuse: bool = True,
    retrain_changed: bool = False,
    reuse_fix: str = DEFAULT_REUSE_FIX,
) -> Path:
    """Train one stage, or reuse the model its ``output_dir`` already holds when it was trained with these settings.

    Args:
        spec (:class:`StageSpec`): the stage.
        train_data (*optional*): in-memory training data (see :func:`bt2_hf.training.train`).
        reuse (`bool`, *optional*, defaults to `True`): look for a finished model in ``spec.output_dir`` first;
            `False` always trains (replacing what is there).
        retrain_changed (`bool`, *optional*, defaults to `False`): retrain a finished model whose settings differ
            instead of refusing it.
        reuse_fix (`str`, *optional*): what a refusal tells the user to do (a CLI names its own flags).

    Returns:
        `Path`: the stage's model directory.

    Raises:
        :class:`StageSettingsError` (a `ValueError`): the finished model was trained with other settings (each named,
            saved and asked) and ``retrain_changed`` is off.
    """
    from .. import training  # looked up at call time, so the one trainer is the one the caller sees

    output_dir = Path(spec.output_dir)
    if reuse and is_finished(output_dir):
        differences = stage_differences(spec, output_dir)
        if not differences:
            logger.info("Reusing %s (trained with the same settings)", output_dir)
            return output_dir
        if not retrain_changed:
            raise StageSettingsError(
                f"{output_dir} holds a model trained with other settings than {spec.name} asks for now ("
                + "; ".join(differences)
                + f"). Fix: {reuse_fix}."
            )
        logger.info("Retraining %s: its settings changed (%s)", output_dir, "; ".join(differences))
    model_args, data_args, training_args, method_config = stage_arguments(spec)
    logger.info("Training the %s model (%s, %d steps)…", spec.name, spec.method, spec.steps)
    return training.train(model_args, data_args, training_args, method_config, train_data=train_data)
