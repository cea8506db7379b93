"""Training: one accelerate loop for every method and tower, frozen references, prototypes, resumable checkpoints."""

from __future__ import annotations

from .arguments import BT2TrainingArguments, DataArguments, ModelArguments
from .checkpointing import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .prototypes import EmptyClassError, compute_class_means
from .references import FrozenReference
from .towers import BT2PairModel, BT2PairOutput
from .trainer import LOG_CSV_FILE, LOG_FILE, build_lr_scheduler, build_optimizer, train

__all__ = [
    "LOG_CSV_FILE",
    "LOG_FILE",
    "BT2PairModel",
    "BT2PairOutput",
    "BT2TrainingArguments",
    "DataArguments",
    "EmptyClassError",
    "FrozenReference",
    "ModelArguments",
    "build_lr_scheduler",
    "build_optimizer",
    "compute_class_means",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
