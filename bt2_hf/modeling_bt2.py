"""``BT2Model``: a backbone plus an embedding head, as a transformers ``PreTrainedModel``.

One class serves the old model, an independently trained new model, BCT and BT² (the head differs, see
:mod:`bt2_hf.heads`). Every model returns L2-normalised embeddings whose first ``config.compatible_dim`` dimensions
are the block compatible with the older model (DESIGN §3.1).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
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
from transformers.utils.hub import extract_commit_hash

from .backbones import build_backbone, get_backbone_class
from .configuration_bt2 import BT2Config
from .errors import BT2InputError
from .fingerprint import (
    FingerprintMismatchError,
    UnverifiedWeightsError,
    adapter_identity,
    combine_fingerprint,
    fingerprint_safetensors_files,
    short_fingerprint,
    state_fingerprint,
)
from .heads import HeadOutput, OrthogonalLinear, build_head
from .processing import (
    IMAGE_PROCESSOR_FILE,
    OPEN_CLIP_TOKENIZER_FILE,
    BT2ImageProcessor,
    OpenCLIPTokenizer,
)
from .utils.io import atomic_directory, file_operation_done, recover_directory
from .utils.repo_id import hub_id_or_none

logger = logging.getLogger(__name__)

# Files that belong to a saved model (weights, config, preprocessing): a new save never carries over an earlier
# model's copy of them (e.g. a stale shard, or the image processor of a model that now has a tokenizer).
_MODEL_FILE_PATTERN = re.compile(
    r"^(config\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?"
    r"|preprocessor_config\.json|open_clip_tokenizer_config\.json|tokenizer(_config)?\.json"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt|generation_config\.json"
    r"|modules\.json|sentence_bert_config\.json|config_sentence_transformers\.json)$"
)
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


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
        unadapted_embeddings (`torch.FloatTensor` of shape `(batch, head_embedding_dim)`, *optional*): for an adapted
            query model (``config.adapter``), the base new model's own embedding, before the adapter mapped it into
            the old space (``embeddings``).
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    compatible_embeddings: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    unadapted_embeddings: torch.FloatTensor | None = None


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
        self.head = build_head(config, hidden_size)
        # An adapted query model maps the head's embedding into an old model's space (bt2_hf.adapters); its weights
        # are model weights (saved, fingerprinted and verified with the rest).
        self.adapter = None
        if config.adapter:
            from .adapters import EmbeddingAdapter

            self.adapter = EmbeddingAdapter.from_config(config.adapter["config"])
        # Preprocessing travels with the model (saved by save_pretrained, restored by from_pretrained).
        self.processor = type(self.backbone).default_processor(dict(self.backbone.backbone_config))
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
        backbone_output: torch.Tensor | None = None,
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
            backbone_output (`torch.FloatTensor` of shape `(batch, backbone_dim)`, *optional*): the backbone's
                pooled output, computed beforehand (a frozen backbone's stored features): the backbone is skipped
                and only the head runs.

        Returns:
            :class:`BT2Output`.
        """
        if backbone_output is not None:
            if pixel_values is not None or input_ids is not None:
                raise ValueError("Pass either backbone_output or the raw inputs (pixel_values / input_ids), not both.")
            pooled = backbone_output
        elif self.modality == "image":
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
        embeddings, compatible, unadapted = head_output.embeddings, head_output.compatible_embeddings, None
        if self.adapter is not None:
            # what galleries and sentence-transformers read is the adapted embedding, in the old model's space
            unadapted = embeddings
            embeddings = compatible = self.adapter(embeddings).to(unadapted.dtype)
        return BT2Output(
            loss=loss,
            embeddings=embeddings,
            compatible_embeddings=compatible,
            features=head_output.features,
            logits=head_output.logits,
            pooler_output=pooled,
            unadapted_embeddings=unadapted,
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
        use_adapter: bool = True,
        output: str = "embeddings",
        max_length: int | None = None,
    ) -> torch.Tensor:
        """Embed raw images or texts with the model's own preprocessing: batched, without gradients, on ``device``.

        Args:
            images (*optional*): for image models: one image or a list of images of any sizes (PIL, numpy, torch),
                or a 4-D batch. The accepted dtypes, ranges and layouts are the input contract of
                :mod:`bt2_hf.processing` (uint8, uint16 or float in [0, 1]; a 3-D array's channel axis is inferred
                as transformers infers it, e.g. ``np.asarray(pil_image)``).
            texts (`str` or `list[str]`, *optional*): for text models.
            batch_size (`int`, *optional*, defaults to 64): inputs per forward pass.
            device (`str` or `torch.device`, *optional*): where to run; defaults to the model's device.
            prefix_dim (`int`, *optional*): keep only the first ``prefix_dim`` dimensions and re-normalise (e.g.
                ``config.compatible_dim`` to compare with the old gallery).
            show_progress (`bool`, *optional*, defaults to `False`): show a progress bar.
            input_data_format (`str`, *optional*): ``"channels_last"`` or ``"channels_first"`` for 3-D and 4-D
                image arrays whose shape leaves the channel axis ambiguous (such as ``(3, H, 3)``).
            use_adapter (`bool`, *optional*, defaults to `True`): for an adapted query model (``config.adapter``),
                `False` returns the base new model's own embeddings (``head_embedding_dim`` wide) instead of their
                map into the old space.
            output (`str`, *optional*, defaults to `"embeddings"`): which output to return, the one embedding loop of
                the library for each: ``"embeddings"`` (the full embedding: what galleries store), ``"compatible_embeddings"``
                (the old-compatible block, re-normalised: what searches an old gallery), ``"features"`` (BT²'s ``f``,
                in the independent model's space) or ``"pooler_output"`` (the backbone's pooled features, before the
                head; not normalised).
            max_length (`int`, *optional*): text models: tokens per text (longer ones are truncated); defaults to the
                tokenizer's own limit.

        Returns:
            `torch.FloatTensor` of shape `(n, width)` on the CPU (``embedding_dim`` or ``prefix_dim`` for the
            embeddings), unit-norm rows except ``pooler_output``: one row per image (a 4-D batch gives one row per
            entry) or text.
        """
        if output not in _ENCODE_OUTPUTS:
            raise ValueError(f"output must be one of {list(_ENCODE_OUTPUTS)}, got {output!r}.")
        if prefix_dim is not None and output != "embeddings":
            raise ValueError("prefix_dim applies to output='embeddings' only.")
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
        if not use_adapter and self.adapter is None:
            raise ValueError(
                "use_adapter=False applies to adapted query models (config.adapter); this model has none."
            )
        width = self.config.embedding_dim if use_adapter else self.config.head_embedding_dim
        if prefix_dim is not None and not 0 < prefix_dim <= width:
            raise ValueError(f"prefix_dim must be in [1, {width}], got {prefix_dim}.")
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
        # Switch modes only when some module is training: eval() and train() visit every module (about 1 ms a call
        # for a 6-layer BERT, the price of a served text query's whole tokenisation).
        switched = any(module.training for module in self.modules())
        if switched:
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
                limit = {} if max_length is None else {"max_length": max_length}
                try:
                    inputs = self.processor(list(batch), return_tensors="pt", padding=True, truncation=True, **limit)
                except TypeError:  # open_clip's tokenizer pads to its fixed context length and takes no options
                    inputs = self.processor(list(batch), return_tensors="pt")
            inputs = {k: v.to(device) for k, v in inputs.items() if k in _FORWARD_INPUTS}
            outputs = self(**inputs)
            if output == "embeddings":
                embeddings = outputs.embeddings if use_adapter else outputs.unadapted_embeddings
            else:
                embeddings = getattr(outputs, output)
            embeddings = embeddings.float()
            if prefix_dim is not None:
                embeddings = F.normalize(embeddings[:, :prefix_dim], dim=-1)
            chunks.append(embeddings.cpu())
        if switched:
            self.train(was_training)
        return torch.cat(chunks)

    # ----------------------------------------------------------------------------------------- saving & loading

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save weights (safetensors), config (with the model's fingerprint) and processor.

        The model is written into a staging folder beside ``save_directory`` and swapped in by one rename when it is
        complete (:func:`bt2_hf.utils.io.atomic_directory`): a crash at any point leaves the previous model whole.
        Other entries of an existing directory (training logs, checkpoints, the model card) are carried over; an
        earlier model's weight or processor files are not. The fingerprint written into ``config.json`` is computed
        on the staged weight files and the processor. Keyword arguments go to
        ``PreTrainedModel.save_pretrained`` (``max_shard_size``, ``state_dict`` under FSDP, …); ``push_to_hub=True``
        (with ``repo_id``, ``token``, ``commit_message``, ``private``, ``revision``) also uploads the saved model with
        :meth:`push_to_hub`.
        """
        is_main_process = kwargs.get("is_main_process", True)
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
        state = state_fingerprint(self)
        never_keep = _MODEL_FILE_PATTERN.match
        with atomic_directory(save_directory, keep_other_entries=True, never_keep=never_keep) as staging:
            self._write_model_files(staging, *args, **kwargs)
        self._bt2_fingerprint_record = (state, self.config.fingerprint)

    def _write_model_files(self, directory: Path, *args: Any, **kwargs: Any) -> None:
        """Weights, processor, then ``config.json`` with the fingerprint of the files just written."""
        super().save_pretrained(directory, *args, **kwargs)
        file_operation_done()
        if self.processor is not None:
            self.processor.save_pretrained(directory)
            file_operation_done()
        from .integrations.sentence_transformers import write_sentence_transformers_files

        write_sentence_transformers_files(directory, self.config)
        # Hashed on the files as written (transformers may rename tensors on save): exactly what loading verifies.
        self.config.fingerprint = combine_fingerprint(
            fingerprint_safetensors_files(_weight_files(directory)), self.processor, adapter_identity(self.config)
        )
        from .compatibility import validate_compatibility_metadata

        # Refuse a config that cannot be read back (e.g. a lineage listing the model itself), before it is written.
        validate_compatibility_metadata(self.config)
        self.config.save_pretrained(directory)
        file_operation_done()

    def verified_fingerprint(self) -> str | None:
        """The fingerprint of the weights and preprocessing this model holds *now*, if it is a verified one.

        That is ``config.fingerprint`` when the model is still what :meth:`from_pretrained` verified or
        :meth:`save_pretrained` wrote (any in-place change to a weight or to the processor since then is seen: the
        state is hashed again on each call), and ``None`` otherwise (modified in memory, loaded unverified, or
        never saved). Galleries compare this, not the config, with their encoder's fingerprint.
        """
        record = getattr(self, "_bt2_fingerprint_record", None)
        if record is None or record[1] is None:
            return None
        return record[1] if state_fingerprint(self) == record[0] else None

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
        trust_unverified_weights: bool = False,
        **kwargs: Any,
    ) -> BT2Model:
        """Load a saved model (local directory or Hub repo id) with its processor, and verify its fingerprint.

        The fingerprint is computed on the tensors as stored in the safetensors files, before any cast, so it is
        verified whatever ``dtype``, ``device_map`` or quantisation is asked for; it covers the processor too.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a directory written by :meth:`save_pretrained`,
                or a Hub repo id.
            verify_fingerprint (`bool`, *optional*, defaults to `True`): refuse a checkpoint whose weights or
                preprocessing differ from the fingerprint in its ``config.json``. `False` loads deliberately edited
                weights, with a warning; such a model is unverified (galleries refuse it).
            trust_unverified_weights (`bool`, *optional*, defaults to `False`): load a checkpoint whose
                ``config.json`` records no fingerprint at all (not saved by bt2_hf), with a warning. Without it such
                a checkpoint is refused.
            kwargs: passed to ``PreTrainedModel.from_pretrained`` (``revision``, ``token``, ``cache_dir``,
                ``local_files_only``, ``dtype``, ``device_map``, …).

        Raises:
            `FingerprintMismatchError`: the stored weights or preprocessing do not match the recorded fingerprint.
            `UnverifiedWeightsError`: no fingerprint is recorded and ``trust_unverified_weights`` is not set.
            `BT2InputError`: a weight file is truncated or corrupted (the message names it).
        """
        name = str(pretrained_model_name_or_path)
        _refuse_other_weight_sources(name, kwargs)
        # transformers then reads model*.safetensors, the files hashed below, and never falls back to a pickled .bin
        kwargs["use_safetensors"] = True
        if not os.path.exists(name) and os.path.isdir(os.path.dirname(os.path.abspath(name))):
            recover_directory(name)  # a swap cut between its two renames (platforms without an atomic exchange)
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder") if k in kwargs
        }
        # Config, weights and processor all come from one commit (a Hub branch may move while we load).
        config_file = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        commit = extract_commit_hash(config_file, None) if config_file else None
        if commit:
            hub_kwargs["revision"] = kwargs["revision"] = commit
        config = kwargs.get("config")
        if not isinstance(config, BT2Config):
            config = BT2Config.from_pretrained(name, **hub_kwargs)
        recorded = config.fingerprint
        if not recorded:
            if not trust_unverified_weights:
                raise UnverifiedWeightsError(
                    f"{name}: config.json records no fingerprint, so its weights cannot be verified (a bt2_hf "
                    "checkpoint written by save_pretrained always has one). Re-save it with save_pretrained, or pass "
                    "trust_unverified_weights=True if you know where these weights come from."
                )
            warnings.warn(
                f"{name} records no fingerprint: loading unverified weights (trust_unverified_weights=True). "
                "Galleries will refuse this model until it is saved with save_pretrained.",
                stacklevel=2,
            )
        stored = None
        if recorded and verify_fingerprint:
            # Hashed as stored, before transformers reads (and maybe casts) them; a truncated file is named here.
            stored = fingerprint_safetensors_files(_weight_files(name, hub_kwargs))
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.backbone.restore_computed_buffers()
        processor = _load_processor(pretrained_model_name_or_path, model.config, hub_kwargs)
        if processor is not None:
            model.processor = processor
        verified = None
        if stored is not None:
            actual = combine_fingerprint(stored, model.processor, adapter_identity(model.config))
            if actual == recorded:
                verified = recorded
            elif stored == recorded and model.processor is not None and not model.config.adapter:
                warnings.warn(
                    f"{name} was saved by an older bt2_hf whose fingerprint covers the weights only: the weights are "
                    "verified, its preprocessing config is not. Re-save it (save_pretrained) to cover both.",
                    stacklevel=2,
                )
                verified = recorded
            else:
                raise FingerprintMismatchError(
                    f"The weights and preprocessing stored in {name} have fingerprint {short_fingerprint(actual)} "
                    f"but its config.json records {short_fingerprint(recorded)}: the weights (model*.safetensors) or "
                    "the preprocessing config (preprocessor_config.json / tokenizer files) were changed or only partly "
                    "written after the config was saved. Re-download or re-save the checkpoint (save_pretrained), or "
                    "pass verify_fingerprint=False if you changed them on purpose."
                )
        elif recorded:
            warnings.warn(
                f"Loading {name} with verify_fingerprint=False: its weights are not checked against config.json; "
                "galleries will refuse this model.",
                stacklevel=2,
            )
        model._bt2_fingerprint_record = (state_fingerprint(model), verified)
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
        hub_kwargs = {
            "revision": revision,
            "token": token,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
        }
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

    @classmethod
    def from_sentence_transformers(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> BT2Model:
        """A sentence-transformers text encoder as a BT² model that embeds exactly as it does (no training).

        The backbone is the checkpoint's transformer (``hf_text``) with its weights and tokenizer, pooled as its
        ``1_Pooling/config.json`` says (mean or CLS; mean when it has none) and truncated at its ``max_seq_length``;
        the head is a linear head holding the identity (square, no bias), so ``encode`` returns the pooled features
        L2-normalised: sentence-transformers' embedding of a checkpoint that ends with ``Normalize`` (all-MiniLM-L6-v2,
        all-mpnet-base-v2), and the same cosine ranking for one that does not. Saved with ``save_pretrained`` it is a
        fingerprinted checkpoint that ``bt2 embed``, ``bt2 index``, ``bt2 adapt`` and ``bt2 verify`` take (``bt2
        wrap`` does it from the command line).

        Args:
            name_or_path (`str` or `os.PathLike`): a local sentence-transformers (or plain transformers) folder, or a
                Hub repo id.
            revision, token, cache_dir, local_files_only: as in :meth:`from_pretrained_backbone`.

        Raises:
            `BT2InputError`: a pooling other than mean or CLS (max, mean-sqrt-len) is configured.
        """
        from .backbones.sentence_encoder import read_max_length, read_pooling

        hub_kwargs = {"revision": revision, "token": token, "cache_dir": cache_dir,
                      "local_files_only": local_files_only}  # fmt: skip
        hub_kwargs = {k: v for k, v in hub_kwargs.items() if v not in (None, False)}
        # Each optional file's folder: the local folder itself, or the Hub snapshot it was fetched into.
        pooling_file = _fetch_optional(name_or_path, "1_Pooling/config.json", hub_kwargs)
        pooling = read_pooling(Path(pooling_file).parent.parent) if pooling_file else "mean"
        settings_file = _fetch_optional(name_or_path, "sentence_bert_config.json", hub_kwargs)
        backbone_config = get_backbone_class("hf_text").config_from_pretrained(str(name_or_path), **hub_kwargs)
        width = int(backbone_config["hidden_size"])
        model = cls.from_pretrained_backbone(
            name_or_path, "hf_text", backbone_config=backbone_config, pooling=pooling, head_type="linear",
            embedding_dim=width, num_classes=0,
            training={"wrapped": "sentence-transformers", "init_from": str(name_or_path)},  # no method: not trained
            **hub_kwargs,
        )  # fmt: skip
        with torch.no_grad():
            model.head.projection.weight.copy_(torch.eye(width))
            model.head.projection.bias.zero_()
        if settings_file and model.processor is not None:
            # truncate where sentence-transformers does (its max_seq_length), within the model's positions
            positions = int(backbone_config.get("max_position_embeddings") or 512)
            limit = read_max_length(Path(settings_file).parent, default=positions)
            model.processor.model_max_length = min(limit, positions - 2 if positions > 2 else positions)
        return model.eval()


_PUSH_KWARGS = ("repo_id", "commit_message", "private", "token", "revision")
_ENCODE_OUTPUTS = ("embeddings", "compatible_embeddings", "features", "pooler_output")
_FORWARD_INPUTS = {"pixel_values", "input_ids", "attention_mask", "token_type_ids"}


def _fetch_optional(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any] | None) -> str | None:
    """A file of a checkpoint (local directory or Hub repo) as a local path, or ``None`` when it has no such file."""
    return cached_file(
        str(name_or_path),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **(hub_kwargs or {}),
    )


# from_pretrained options that make transformers read weights other than model*.safetensors (the files the
# fingerprint is computed on), with what each would load instead.
_OTHER_WEIGHT_SOURCES = {
    "use_safetensors": "pytorch_model.bin (a pickle) instead of model.safetensors",
    "variant": "model.<variant>.safetensors instead of model.safetensors",
    "gguf_file": "a GGUF file",
    "from_tf": "TensorFlow weights",
    "from_flax": "Flax weights",
    "state_dict": "the given state dict instead of the stored weights",
}


def _refuse_other_weight_sources(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse the switches that would load weights the fingerprint does not cover: the model would otherwise report
    the recorded fingerprint as verified for files that were never hashed."""
    for option, loads in _OTHER_WEIGHT_SOURCES.items():
        value = kwargs.get(option)
        if option == "use_safetensors":
            harmless = value is None or value is True
        else:
            harmless = value in (None, False, "")
        if harmless:
            continue
        raise ValueError(
            f"BT2Model.from_pretrained({name!r}, {option}={value!r}) would load {loads}, which the fingerprint in "
            "config.json does not cover. bt2_hf checkpoints load from model*.safetensors only: drop "
            f"{option}=, or re-save the weights you mean with save_pretrained (which fingerprints them)."
        )


def _weight_files(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any] | None = None) -> list[str]:
    """The safetensors file(s) of a checkpoint (local directory or Hub repo), as local paths."""

    def fetch(filename: str) -> str | None:
        return _fetch_optional(name_or_path, filename, hub_kwargs)

    single = fetch(SAFE_WEIGHTS_NAME)
    if single:
        return [single]
    index = fetch(SAFE_WEIGHTS_INDEX_NAME)
    if not index:
        raise BT2InputError(
            f"no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}: bt2_hf checkpoints store their weights as "
            "safetensors (save_pretrained writes them). Save the model again.",
            name_or_path,
        )
    try:
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise BT2InputError(f"the shard index is not valid ({type(error).__name__}: {error}).", index) from None
    paths = []
    for shard in shards:
        path = fetch(shard)
        if not path:
            raise BT2InputError(f"the shard {shard} listed in {SAFE_WEIGHTS_INDEX_NAME} is missing.", name_or_path)
        paths.append(path)
    return paths


def _load_processor(name_or_path: str | os.PathLike, config: BT2Config, hub_kwargs: dict[str, Any]) -> Any:
    """The processor stored beside the weights (local directory or Hub repo), or ``None``."""

    def fetch(filename: str) -> str | None:
        return _fetch_optional(name_or_path, filename, hub_kwargs)

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
