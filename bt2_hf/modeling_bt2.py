"""``BT2Model``: a backbone plus an embedding head, as a transformers ``PreTrainedModel``.

One class serves the old model, an independently trained new model, BCT and BT² (the head differs, see
:mod:`bt2_hf.heads`). Every model returns L2-normalised embeddings whose first ``config.compatible_dim`` dimensions
are the block compatible with the older model (DESIGN §3.1).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, cached_file

from .backbones import build_backbone, get_backbone_class
from .configuration_bt2 import BT2Config
from .fingerprint import fingerprint_model, fingerprint_state_dict, short_fingerprint
from .heads import BasisTransformationHead, HeadOutput, LinearHead, OrthogonalLinear
from .processing import (
    IMAGE_PROCESSOR_FILE,
    OPEN_CLIP_TOKENIZER_FILE,
    BT2ImageProcessor,
    OpenCLIPTokenizer,
    default_processor,
)
from .utils.repo_id import hub_id_or_none

logger = logging.getLogger(__name__)

# Files save_pretrained writes for the weights; stale ones from an earlier save are removed after a new save.
_WEIGHT_FILE_PATTERN = re.compile(r"^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")


class FingerprintMismatchError(ValueError):
    """The weights loaded do not hash to the fingerprint recorded in ``config.json``."""


@dataclass
class BT2Output(ModelOutput):
    """Outputs of :class:`BT2Model`.

    Args:
        loss (`torch.FloatTensor`, *optional*): cross-entropy of ``logits`` against ``labels`` when labels are given.
        embeddings (`torch.FloatTensor` of shape `(batch, embedding_dim)`): the full L2-normalised embedding.
        compatible_embeddings (`torch.FloatTensor` of shape `(batch, compatible_dim)`): the old-compatible prefix,
            re-normalised: compare it with the old model's gallery.
        features (`torch.FloatTensor` of shape `(batch, feature_dim)`): the normalised feature the classifier sees
            (BT²: ``f``, matched to the independently trained model; linear heads: the embedding itself).
        logits (`torch.FloatTensor` of shape `(batch, num_classes)`, *optional*): the training classifier's output.
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden_size)`): the backbone's pooled features.
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    compatible_embeddings: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class BT2PreTrainedModel(PreTrainedModel):
    """Base class wiring :class:`BT2Config` into transformers' loading, saving and initialisation."""

    config_class = BT2Config
    config: BT2Config
    base_model_prefix = "bt2"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    model_tags = ["bt2_hf", "backward-compatible-embeddings"]
    supports_gradient_checkpointing = True  # through the backbone (Backbone.set_gradient_checkpointing)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models that are transformers models get their own _init_weights (transformers dispatches them);
        # this covers our heads, the small CNN and open_clip towers.
        if isinstance(module, OrthogonalLinear):
            init.orthogonal_(module.base)
            init.zeros_(module.skew)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class BT2Model(BT2PreTrainedModel):
    r"""An embedding model: backbone → pooled features → head → normalised (compatible) embeddings.

    Args:
        config (:class:`BT2Config`): the architecture; the backbone is built from it with no download.

    Example:

    ```python
    >>> import torch
    >>> from bt2_hf import BT2Config, BT2Model
    >>> config = BT2Config(
    ...     backbone_type="small_cnn", head_type="basis_transformation",
    ...     feature_dim=32, old_embedding_dim=32, extra_dim=8, num_classes=10,
    ... )
    >>> model = BT2Model(config).eval()
    >>> out = model(pixel_values=torch.randn(2, 1, 28, 28))
    >>> out.embeddings.shape, out.compatible_embeddings.shape
    (torch.Size([2, 40]), torch.Size([2, 32]))
    ```
    """

    def __init__(self, config: BT2Config):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_type, config.backbone_config, config.pooling)
        self.main_input_name = self.backbone.main_input_name
        hidden_size = self.backbone.hidden_size
        if config.head_type == "basis_transformation":
            self.head = BasisTransformationHead(
                input_dim=hidden_size,
                feature_dim=config.feature_dim,
                old_embedding_dim=config.old_embedding_dim,
                extra_dim=config.extra_dim,
                feature_scale=config.feature_scale,
                num_labels=config.num_classes,
                nonlinearity=config.head_nonlinearity,
                logit_scale=config.logit_scale,
            )
        else:
            self.head = LinearHead(
                input_dim=hidden_size,
                embedding_dim=config.embedding_dim,
                num_labels=config.num_classes,
                compatible_dim=config.compatible_dim,
                nonlinearity=config.head_nonlinearity,
                logit_scale=config.logit_scale,
            )
        # Preprocessing travels with the model (saved by save_pretrained, restored by from_pretrained).
        self.processor = default_processor(config, self.backbone.backbone_config)
        self.post_init()

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``."""
        return self.backbone.modality

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Any = None,
                                    every_n_layers: int = 1) -> None:  # fmt: skip
        # The wrapped backbone owns its layers: a transformers model checkpoints its GradientCheckpointingLayers,
        # open_clip its residual blocks; the head is small and is never checkpointed.
        self.backbone.set_gradient_checkpointing(enable)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BT2Output:
        """Embed a batch.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`, *optional*): image inputs
                (image backbones), e.g. from ``model.processor(images)``.
            input_ids (`torch.LongTensor` of shape `(batch, length)`, *optional*): token ids (text backbones).
            attention_mask (`torch.LongTensor` of shape `(batch, length)`, *optional*): text padding mask.
            token_type_ids (`torch.LongTensor`, *optional*): BERT-style segment ids.
            labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class ids; gives ``loss`` (cross-entropy).

        Returns:
            :class:`BT2Output`.
        """
        if self.modality == "image":
            if pixel_values is None:
                raise ValueError(
                    f"This model encodes images (backbone {self.config.backbone_type!r}); call it with pixel_values"
                    + (", not input_ids." if input_ids is not None else ".")
                )
            pooled = self.backbone(pixel_values=pixel_values)
        else:
            if input_ids is None:
                raise ValueError(
                    f"This model encodes text (backbone {self.config.backbone_type!r}); call it with input_ids "
                    "(and attention_mask)" + (", not pixel_values." if pixel_values is not None else ".")
                )
            pooled = self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        head_output: HeadOutput = self.head(pooled)
        loss = None
        if labels is not None:
            if head_output.logits is None:
                raise ValueError("labels were given but the model has no classifier (config.num_classes == 0).")
            loss = F.cross_entropy(head_output.logits.float(), labels)
        return BT2Output(
            loss=loss,
            embeddings=head_output.embeddings,
            compatible_embeddings=head_output.compatible_embeddings,
            features=head_output.features,
            logits=head_output.logits,
            pooler_output=pooled,
        )

    @torch.no_grad()
    def encode(
        self,
        images: Any = None,
        texts: Sequence[str] | str | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        prefix_dim: int | None = None,
        show_progress: bool = False,
        input_data_format: str | None = None,
    ) -> torch.Tensor:
        """Embed raw images or texts with the model's own preprocessing: batched, without gradients, on ``device``.

        Args:
            images (*optional*): for image models: one image or a list of images of any sizes (PIL, numpy, torch),
                or a 4-D batch. The accepted dtypes, ranges and layouts are the input contract of
                :mod:`bt2_hf.processing` (uint8, uint16 or float in [0, 1]; 3-D arrays need ``input_data_format``).
            texts (`str` or `list[str]`, *optional*): for text models.
            batch_size (`int`, *optional*, defaults to 64): inputs per forward pass.
            device (`str` or `torch.device`, *optional*): where to run; defaults to the model's device.
            prefix_dim (`int`, *optional*): keep only the first ``prefix_dim`` dimensions and re-normalise (e.g.
                ``config.compatible_dim`` to compare with the old gallery).
            show_progress (`bool`, *optional*, defaults to `False`): show a progress bar.
            input_data_format (`str`, *optional*): ``"channels_last"`` or ``"channels_first"`` for 3-D (and
                ambiguous 4-D) image arrays.

        Returns:
            `torch.FloatTensor` of shape `(n, embedding_dim or prefix_dim)` on the CPU, unit-norm rows: one row per
            image (a 4-D batch gives one row per entry) or text.
        """
        if (images is None) == (texts is None):
            raise ValueError("Pass exactly one of images= or texts= to encode().")
        wanted = "image" if images is not None else "text"
        if wanted != self.modality:
            raise ValueError(
                f"This model encodes {self.modality}s (backbone {self.config.backbone_type!r}), but {wanted}s were given."
            )
        if self.processor is None:
            raise ValueError(
                "This model has no processor: set `model.processor` (e.g. a tokenizer from "
                "AutoTokenizer.from_pretrained(...)) before encode(); save_pretrained stores it with the weights."
            )
        if prefix_dim is not None and not 0 < prefix_dim <= self.config.embedding_dim:
            raise ValueError(f"prefix_dim must be in [1, {self.config.embedding_dim}], got {prefix_dim}.")
        if wanted == "image":
            # A 4-D batch is sliced (it stays a batch: the processor reads its layout), anything else is a list.
            is_batch = isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4
            items = images if is_batch else (list(images) if isinstance(images, (list, tuple)) else [images])
        else:
            items = [texts] if isinstance(texts, str) else list(texts)
        if len(items) == 0:
            raise ValueError(f"No {wanted}s to encode: pass at least one.")
        if device is not None:
            self.to(device)
        device = self.device
        was_training = self.training
        self.eval()
        chunks = []
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc="encode", disable=not show_progress):
            batch = items[start : start + batch_size]
            if wanted == "image":
                inputs = self.processor(
                    batch, return_tensors="pt", input_data_format=input_data_format, index_offset=start
                )
            else:
                inputs = self.processor(list(batch), return_tensors="pt", padding=True, truncation=True)
            inputs = {k: v.to(device) for k, v in inputs.items() if k in _FORWARD_INPUTS}
            embeddings = self(**inputs).embeddings.float()
            if prefix_dim is not None:
                embeddings = F.normalize(embeddings[:, :prefix_dim], dim=-1)
            chunks.append(embeddings.cpu())
        self.train(was_training)
        return torch.cat(chunks)

    # ----------------------------------------------------------------------------------------- saving & loading

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save weights (safetensors), config (with the weights' fingerprint) and processor.

        Files are first written to a temporary directory and then moved into place one by one, ``config.json``
        last; a stale weight file from an earlier save is removed. A reader thus never pairs a config with weights it
        does not describe without the fingerprint check noticing. Keyword arguments go to
        ``PreTrainedModel.save_pretrained`` (``max_shard_size``, …); ``push_to_hub=True`` (with ``repo_id``,
        ``token``, ``commit_message``, ``private``, ``revision``) also uploads the saved model with :meth:`push_to_hub`.
        """
        is_main_process = kwargs.get("is_main_process", True)
        # Under FSDP the parameters are shards: the caller passes the full state dict (accelerator.get_state_dict),
        # and the fingerprint is taken over those full parameters (what from_pretrained will load and verify).
        state_dict = kwargs.get("state_dict")
        self.config.fingerprint = fingerprint_model(self) if state_dict is None else fingerprint_state_dict(state_dict)
        from .compatibility import validate_compatibility_metadata  # refuse to write a config that cannot be read back

        validate_compatibility_metadata(self.config)
        if kwargs.pop("push_to_hub", False):
            # Save here, then upload through bt2_hf's push (card with the bt2 block, processor, fingerprint).
            push_kwargs = {k: kwargs.pop(k) for k in _PUSH_KWARGS if k in kwargs}
            self.save_pretrained(save_directory, *args, **kwargs)
            if is_main_process:
                self.push_to_hub(push_kwargs.pop("repo_id", None) or Path(save_directory).name, **push_kwargs)
            return
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory {save_directory} is a file; pass a directory.")
        if not is_main_process:
            return
        save_directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".bt2-save-", dir=save_directory.parent))
        try:
            super().save_pretrained(staging, *args, **kwargs)
            if self.processor is not None:
                self.processor.save_pretrained(staging)
            from .integrations.sentence_transformers import write_sentence_transformers_files

            write_sentence_transformers_files(staging, self.config)
            new_files = sorted(p.name for p in staging.iterdir() if p.is_file())
            for name in sorted(new_files, key=lambda n: n == "config.json"):  # config.json last
                os.replace(staging / name, save_directory / name)
            for stale in save_directory.iterdir():
                if _WEIGHT_FILE_PATTERN.match(stale.name) and stale.name not in new_files:
                    stale.unlink()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        max_shard_size: str | int | None = None,
        tags: list[str] | None = None,
        card_metrics: Any = None,
        card_kwargs: dict[str, Any] | None = None,
        **unsupported: Any,
    ) -> Any:
        """Upload the model with its processor and a bt2_hf model card (the ``bt2`` compatibility block, fingerprint).

        The transformers method of the same name would write a generic card (``library_name: transformers``) and skip
        the processor; this one goes through :func:`bt2_hf.hub.push_to_hub`.

        Args:
            repo_id (`str`): ``"namespace/name"`` (or ``"name"`` for the token's user).
            commit_message (`str`, *optional*), private (`bool`, *optional*), token (`str`, *optional*),
            revision (`str`, *optional*): as in :func:`bt2_hf.hub.push_to_hub` (``revision`` is a branch).
            max_shard_size (`str` or `int`, *optional*): passed to ``save_pretrained``.
            tags (`list[str]`, *optional*): extra card tags.
            card_metrics, card_kwargs: evaluation results and more card fields (``license``, ``dataset`` …).

        Returns:
            `huggingface_hub.CommitInfo`: ``oid`` is the commit sha.
        """
        if unsupported:
            raise TypeError(
                f"BT2Model.push_to_hub does not support {sorted(unsupported)}; supported: commit_message, private, "
                "token, revision, max_shard_size, tags, card_metrics, card_kwargs."
            )
        from .hub.push import push_to_hub

        card_kwargs = dict(card_kwargs or {})
        if tags:
            card_kwargs["tags"] = [*card_kwargs.get("tags", []), *tags]
        return push_to_hub(
            self,
            repo_id,
            revision=revision,
            token=token,
            commit_message=commit_message,
            private=private,
            card_metrics=card_metrics,
            card_kwargs=card_kwargs,
            max_shard_size=max_shard_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        verify_fingerprint: bool = True,
        **kwargs: Any,
    ) -> BT2Model:
        """Load a saved model (local directory or Hub repo id) with its processor, and verify its fingerprint.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a directory written by :meth:`save_pretrained`,
                or a Hub repo id.
            verify_fingerprint (`bool`, *optional*, defaults to `True`): recompute the weights' sha256 and refuse a
                checkpoint whose weights differ from the fingerprint in its ``config.json``.
            kwargs: passed to ``PreTrainedModel.from_pretrained`` (``revision``, ``token``, ``cache_dir``,
                ``local_files_only``, ``dtype``, …).
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.backbone.restore_computed_buffers()
        recorded = model.config.fingerprint
        dtype_changed = kwargs.get("dtype", kwargs.get("torch_dtype")) not in (None, "auto")
        if verify_fingerprint and recorded and not dtype_changed:
            actual = fingerprint_model(model)
            if actual != recorded:
                raise FingerprintMismatchError(
                    f"The weights loaded from {pretrained_model_name_or_path} have fingerprint "
                    f"{short_fingerprint(actual)} but its config.json records {short_fingerprint(recorded)}: the "
                    "weights were changed or only partly written after the config was saved. Re-download or re-save "
                    "the checkpoint (save_pretrained), or pass verify_fingerprint=False if you changed them on purpose."
                )
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder") if k in kwargs
        }
        processor = _load_processor(pretrained_model_name_or_path, model.config, hub_kwargs)
        if processor is not None:
            model.processor = processor
        return model

    @classmethod
    def from_pretrained_backbone(
        cls,
        name_or_path: str | os.PathLike,
        backbone_type: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **config_kwargs: Any,
    ) -> BT2Model:
        """Build a model whose backbone starts from a pretrained checkpoint, with a fresh head and its preprocessing.

        Files come through huggingface_hub's cache, so a checkpoint downloaded once also loads offline
        (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``). The checkpoint's own preprocessing becomes
        ``model.processor`` and is saved with the model: a transformers checkpoint's image processor (size, centre
        crop, resampling, mean/std) or tokenizer; an open_clip checkpoint's ``preprocess_cfg``.

        Args:
            name_or_path (`str` or `os.PathLike`): for ``hf_vision``/``hf_text``: a Hub repo id (``"google/vit-base-
                patch16-224"``) or a local transformers checkpoint folder (e.g. a sentence-transformers MiniLM). For
                ``open_clip_*``: ``"hf-hub:<repo id>"``, a local folder with ``open_clip_config.json`` and weights, or
                a weights file (then give the architecture in ``backbone_config``).
            backbone_type (`str`): the registered backbone name.
            revision (`str`, *optional*): the Hub revision (branch, tag or commit sha).
            token (`str` or `bool`, *optional*): a Hub token.
            cache_dir (`str`, *optional*): the Hub cache to use.
            local_files_only (`bool`, *optional*, defaults to `False`): only use the local cache.
            config_kwargs: the other :class:`BT2Config` fields (head type and dims, ``num_classes`` …).

        ``config.base_model`` records the checkpoint only when it is a Hub repo id (what a model card's ``base_model``
        may hold); a local start is recorded in ``config.training["init_from"]``.
        """
        backbone_class = get_backbone_class(backbone_type)
        name_or_path = str(name_or_path)
        hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        hub_kwargs = {k: v for k, v in hub_kwargs.items() if v not in (None, False)}
        if "backbone_config" not in config_kwargs:
            config_kwargs["backbone_config"] = backbone_class.config_from_pretrained(name_or_path, **hub_kwargs)
        hub_id = hub_id_or_none(name_or_path)
        training = dict(config_kwargs.pop("training", None) or {})
        training.setdefault("init_from", name_or_path)
        if revision:
            training.setdefault("init_from_revision", revision)
        config_kwargs.setdefault("base_model", hub_id)
        config = BT2Config(backbone_type=backbone_type, training=training, **config_kwargs)
        model = cls(config)
        model.backbone.load_pretrained_weights(name_or_path, **hub_kwargs)
        processor = model.backbone.pretrained_processor(name_or_path, **hub_kwargs)
        if processor is not None:
            model.processor = processor
        return model


_PUSH_KWARGS = ("repo_id", "commit_message", "private", "token", "revision")
_FORWARD_INPUTS = {"pixel_values", "input_ids", "attention_mask", "token_type_ids"}


def _load_processor(name_or_path: str | os.PathLike, config: BT2Config, hub_kwargs: dict[str, Any]) -> Any:
    """The processor stored beside the weights (local directory or Hub repo), or ``None``."""

    def fetch(filename: str) -> str | None:
        return cached_file(
            str(name_or_path),
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )

    path = fetch(IMAGE_PROCESSOR_FILE)
    if path:
        return BT2ImageProcessor.from_json_file(path)
    path = fetch(OPEN_CLIP_TOKENIZER_FILE)
    if path:
        return OpenCLIPTokenizer.from_json_file(path)
    if config.modality == "text" and fetch("tokenizer_config.json"):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(name_or_path), **hub_kwargs)
    return None
