"""Training: one accelerate loop for every method and tower, frozen references, prototypes, resumable checkpoints;
BT²/BCT heads for query → document retrieval trained on a frozen text encoder's cached features (retrieval_head)."""

from __future__ import annotations

from .arguments import BT2TrainingArguments, DataArguments, ModelArguments
from .checkpointing import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .prototypes import EmptyClassError, compute_class_means
from .references import FrozenReference
from .retrieval_head import RetrievalHeadResult, encoder_features, head_embeddings, train_retrieval_head
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
    "RetrievalHeadResult",
    "build_lr_scheduler",
    "build_optimizer",
    "compute_class_means",
    "encoder_features",
    "head_embeddings",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
    "train_retrieval_head",
]
