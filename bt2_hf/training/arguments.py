"""Run arguments of ``bt2 train``: three dataclasses with ``help`` metadata (parsed by HfArgumentParser).

The method's own hyper-parameters (``influence_weight`` …) live in its config dataclass (:mod:`bt2_hf.methods`), so
the three layers stay apart: architecture (``BT2Config``), method (``MethodConfig``), run (these).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

REFERENCE_TARGET_MODES = ("online", "precomputed")
REFERENCE_TARGET_ROLES = ("old", "independent", "image")  # the frozen references a method may require


@dataclass
class ModelArguments:
    """What model to train and which frozen references it is trained against."""

    backbone_type: str = field(
        default="small_cnn",
        metadata={"help": "Registered backbone: small_cnn, hf_vision, hf_text, open_clip_vision, open_clip_text."},
    )
    backbone_config: str | None = field(
        default=None,
        metadata={
            "help": "The backbone's config as a JSON object (in YAML: a mapping), e.g. a transformers ViTConfig "
            'with "model_type": "vit". Ignored when init_from is set and this is empty.'
        },
    )
    pooling: str = field(default="default", metadata={"help": "How the backbone pools: default, cls, mean, pooler."})
    embedding_dim: int | None = field(
        default=None,
        metadata={
            "help": "Embedding width of a linear head (old / independent / BCT). Default: 128, or the old model's "
            "width for BCT. BT² derives it (independent width + extra_dim)."
        },
    )
    head_nonlinearity: str | None = field(
        default=None,
        metadata={
            "help": "relu or none before normalising. Default: none for a linear head (old / independent / BCT); "
            "BT² takes the independent model's, so that its feature f can match that embedding (a ReLU'd f cannot "
            "match a signed one)."
        },
    )
    logit_scale: float = field(
        default=1.0,
        metadata={
            "help": "Fixed factor on the training classifier's logits (1: the research code; ~16 converges much "
            "faster on short schedules). Embeddings are unaffected."
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "Start the backbone from this local pretrained checkpoint (e.g. a ViT directory)."},
    )
    init_from_independent: bool = field(
        default=False,
        metadata={
            "help": "Start from the independent model (same architecture): its backbone, and its projection and "
            "classifier (BT²: the rows that give f, so f starts as its embedding; BCT: the whole head, same width)."
        },
    )
    old_model: str | None = field(
        default=None, metadata={"help": "The frozen old model: a bt2_hf checkpoint directory or Hub id (BCT, BT²)."}
    )
    old_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of old_model."})
    old_embedding_dim: int | None = field(
        default=None,
        metadata={"help": "Expected width of the old model's embedding; training refuses a checkpoint that differs."},
    )
    independent_model: str | None = field(
        default=None, metadata={"help": "The frozen independently trained new model (BT²): checkpoint or Hub id."}
    )
    independent_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of it."})
    text_backbone_type: str | None = field(
        default=None,
        metadata={"help": "Pairs (clip, bt2_pair): the text tower's backbone (hf_text, open_clip_text); the image "
                  "tower's is backbone_type."},
    )  # fmt: skip
    text_backbone_config: str | None = field(
        default=None, metadata={"help": "Pairs: the text tower's backbone config as a JSON object."}
    )
    text_init_from: str | None = field(
        default=None, metadata={"help": "Pairs: start the text tower from this pretrained checkpoint (e.g. MiniLM)."}
    )
    text_pooling: str = field(default="default", metadata={"help": "Pairs: how the text backbone pools."})
    image_model: str | None = field(
        default=None,
        metadata={"help": "independent_text: the frozen image model the text tower is aligned with (a new model)."},
    )
    image_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of image_model."})
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "A text tower built from backbone_config (no init_from) needs a tokenizer: a local folder or Hub "
            "id (open_clip text towers bring their own)."
        },
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Train the head only; the backbone stays frozen (and in eval mode: no dropout)."},
    )
    freeze_text_backbone: bool = field(
        default=False,
        metadata={
            "help": "Pairs: freeze only the text tower's backbone (a pretrained encoder on a CPU budget) while the image "
            "tower trains whole."
        },
    )
    cache_frozen_text_features: bool = field(
        default=True,
        metadata={
            "help": "A frozen text backbone runs once over every caption before training and the head trains on its "
            "stored outputs (the same numbers: a frozen backbone is in eval mode, captions are not augmented); "
            "False runs it on every batch."
        },
    )

    def __post_init__(self) -> None:
        for name in ("backbone_config", "text_backbone_config"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value.strip() else None
                except json.JSONDecodeError as error:
                    raise ValueError(f"{name} must be a JSON object, got {value!r}: {error}") from None
                setattr(self, name, value)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping, got {type(value).__name__}.")


@dataclass
class DataArguments:
    """Which data to train on: images with labels (image towers), or images with captions (text towers, pairs)."""

    dataset: str = field(
        default="fashion_mnist",
        metadata={
            "help": "fashion_mnist (IDX files in data_dir), a directory (Fashion-MNIST IDX files, save_to_disk "
            "output or imagefolder) or a Hub dataset id (online)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist, from "
            "`apt-get install dataset-fashion-mnist`)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    class_subset: str | None = field(
        default=None,
        metadata={
            "help": "Train on these classes only, e.g. '0-4' or '0,2,5-9' (the 'data change' setting: the old "
            "model sees a subset). Labels keep their ids; recorded in the checkpoint."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training images, class-balanced (quick runs)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column of a `datasets` dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Label column of a `datasets` dataset."})
    text_column: str | None = field(
        default=None,
        metadata={"help": "Caption column of an image–text dataset (default: text or caption; a list gives one row "
                  "per caption)."},
    )  # fmt: skip
    old_target_column: str | None = field(
        default=None,
        metadata={
            "help": "A column holding the old image model's embeddings of the images, precomputed: used as the old "
            "targets (and for the class prototypes) instead of running the old model."
        },
    )
    max_text_length: int = field(default=64, metadata={"help": "Tokens per caption (longer ones are truncated)."})
    image_size: int | None = field(
        default=None, metadata={"help": "Resize images of a `datasets` dataset to this size when decoding."}
    )
    num_channels: int = field(default=3, metadata={"help": "Channels to decode `datasets` images to (1 or 3)."})
    in_memory: bool = field(
        default=True, metadata={"help": "Decode the whole split into one tensor (small datasets); else decode lazily."}
    )
    augment_padding: int = field(
        default=4, metadata={"help": "Zero padding before the random crop of training augmentation (0: no crop)."}
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips during training."})


@dataclass
class BT2TrainingArguments:
    """How to train: method, optimisation, precision, checkpoints and logging."""

    output_dir: str = field(metadata={"help": "Where the final model, logs and checkpoints are written."})
    method: str = field(
        default="independent",
        metadata={
            "help": "Training method: independent, bct or bt2 (image towers); independent_text, bct_text or bt2_text "
            "(text towers on image–text data); clip or bt2_pair (an image and a text tower together)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and augmentation."})
    num_train_epochs: int = field(default=1, metadata={"help": "Epochs to train (unless max_steps is set)."})
    max_steps: int = field(
        default=-1, metadata={"help": "Optimizer steps to train; overrides num_train_epochs if > 0."}
    )
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Images per process and micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the head(s), when it should differ from the backbone's learning_rate "
            "(e.g. 1e-3 for a fresh head on a pretrained text encoder fine-tuned at 5e-5)."
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "Weight decay (coupled L2 for adam/sgd as in the research code; decoupled for adamw)."},
    )
    optimizer: str = field(default="adam", metadata={"help": "adam, adamw or sgd (fused on CUDA)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={
            "help": "cosine (after warm-up, decaying towards 0 at the end) or constant; transformers.get_scheduler's "
            "schedules: the warm-up rises linearly from 0 (optimizer step s of W uses s/W of the peak)."
        },
    )
    warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warm-up length in epochs."})
    warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up length in optimizer steps (adds to epochs)."}
    )
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (none: off)."})
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "no, fp16 or bf16; by default taken from `accelerate launch` / its config (else no)."},
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model's forward with torch.compile."})
    channels_last: bool | None = field(
        default=None, metadata={"help": "Channels-last images and weights (default: on for CNNs on CUDA)."}
    )
    data_on_device: bool | None = field(
        default=None,
        metadata={
            "help": "Keep in-memory data on the accelerator and augment there, with no DataLoader (default: on "
            "for in-memory data)."
        },
    )
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers for lazily decoded datasets."})
    reference_targets: str = field(
        default="online",
        metadata={
            "help": "online: the frozen references embed every augmented batch; precomputed: embed each image once "
            "before training (one augmentation, as in the research code); or one mode per reference role, e.g. "
            "'old=online,independent=precomputed'."
        },
    )
    prototype_augmentation: bool = field(
        default=True,
        metadata={"help": "Compute the old prototypes W_o under training augmentation (research code) or without."},
    )
    save_steps: int = field(
        default=0, metadata={"help": "Save a resumable checkpoint every N optimizer steps (0: off)."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' for the newest under output_dir."}
    )
    resume_with_changes: bool = field(
        default=False,
        metadata={
            "help": "Resume although settings differ from those the run recorded (seed, learning rate, method, …); "
            "the differences are recorded in run.json. Without it such a resume is refused, naming each difference."
        },
    )
    stop_after_steps: int | None = field(
        default=None,
        metadata={
            "help": "Stop at this optimizer step after saving a checkpoint, without changing the schedule (for "
            "time-limited jobs); resume later with --resume_from_checkpoint latest."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the mean losses every N optimizer steps."})
    log_with: str | None = field(
        default=None,
        metadata={"help": "accelerate trackers, comma-separated (tensorboard, wandb, …); JSON/CSV always."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "`bt2 train`: push the final model with its card (bt2_hf's push)."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Repo id to push to (default: the output_dir's name in your namespace)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        choices = {
            "optimizer": ("adam", "adamw", "sgd"),
            "lr_scheduler_type": ("cosine", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        self.reference_target_modes()  # refuses a malformed value now, not at the first batch
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.head_learning_rate is not None and not self.head_learning_rate >= 0:
            raise ValueError(f"head_learning_rate must be a number ≥ 0, got {self.head_learning_rate}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("Set num_train_epochs > 0 or max_steps > 0.")

    def reference_target_mode(self, role: str) -> str:
        """``"online"`` or ``"precomputed"``: how the frozen reference ``role`` (``"old"``, ``"independent"``, or
        one tower of a role, like a pair's ``"independent_image"``) gives its image targets. Roles that a per-role
        ``reference_targets`` leaves out are online."""
        modes = self.reference_target_modes()
        return modes.get(role) or modes.get(role.split("_", 1)[0], "online")

    def reference_target_modes(self) -> dict[str, str]:
        """``reference_targets`` by reference role (``old``, ``independent``, ``image``).

        Raises:
            `ValueError`: a mode other than ``online`` / ``precomputed``, an unknown role, or a role given twice.
        """
        value = self.reference_targets.strip()
        if value in REFERENCE_TARGET_MODES:
            return dict.fromkeys(REFERENCE_TARGET_ROLES, value)
        modes: dict[str, str] = {}
        for part in value.split(","):
            role, sep, mode = (text.strip() for text in part.partition("="))
            if not sep or role not in REFERENCE_TARGET_ROLES or mode not in REFERENCE_TARGET_MODES or role in modes:
                raise ValueError(
                    f"reference_targets must be one of {list(REFERENCE_TARGET_MODES)} or one mode per reference "
                    f"role, like 'old=online,independent=precomputed' (roles {list(REFERENCE_TARGET_ROLES)}, each "
                    f"once); got {self.reference_targets!r}."
                )
            modes[role] = mode
        return modes

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
