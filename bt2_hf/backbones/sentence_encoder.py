"""A frozen pretrained sentence encoder loaded from a local folder (a sentence-transformers or transformers checkpoint).

The folder goes where a Hub id would: the encoder is the ``hf_text`` backbone built from the folder's ``config.json``
with its weights (``load_pretrained_weights``) and tokenizer (``pretrained_processor``), so it embeds exactly as a
BT² model starting from that checkpoint would; the pooling follows the sentence-transformers folder's
``1_Pooling/config.json`` (mean or CLS; mean when the folder has none) and the embedding is L2-normalised.

Loading refuses a tokenizer that belongs to another model (:func:`check_tokenizer_matches_model`): more tokens than
the model has embedding rows, or other special-token ids than the model's config. The weights load on the first
:meth:`SentenceEncoder.encode`; the fingerprint (:attr:`SentenceEncoder.fingerprint`: the stored tensors of the
folder's safetensors files and the tokenizer) is known without them, so a cache of embeddings keyed by it can answer
without loading the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError

_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_UNSUPPORTED_POOLING = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")


def check_tokenizer_matches_model(tokenizer: Any, model_config: Any, path: str | os.PathLike) -> None:
    """Refuse a tokenizer that does not belong to the model: one clear `BT2InputError` naming both sides.

    Checks that every token id the tokenizer can produce has an embedding row (``len(tokenizer) <= vocab_size``),
    and that the padding, start and end token ids agree where both the tokenizer and the model's config set them
    (e.g. a BERT tokenizer pads with 0, an MPNet model with 1).

    Args:
        tokenizer: a transformers tokenizer.
        model_config: the model's transformers config.
        path (`str`): the folder, for the message.
    """
    fix = (
        "the folder's tokenizer files (tokenizer.json, vocab.txt, tokenizer_config.json) belong to another model; "
        "copy the tokenizer that was saved with these weights."
    )
    rows = getattr(model_config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise BT2InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the {model_config.model_type} model has only {rows} "
            f"embedding rows (ids ≥ {rows} would index past them): {fix}",
            path,
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(tokenizer, name, None), getattr(model_config, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise BT2InputError(
                f"the tokenizer's {name} is {ours} but the {model_config.model_type} model's config says {theirs}: "
                f"{fix}",
                path,
            )


def read_pooling(folder: Path) -> str:
    """The sentence-transformers pooling of a folder (``mean`` or ``cls``); ``mean`` when it has no pooling config."""
    config_path = folder / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return "mean"
    from ..utils.readers import read_json

    config = read_json(config_path, "sentence-transformers pooling config")
    chosen = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
    unsupported = [key for key in _UNSUPPORTED_POOLING if config.get(key)]
    if unsupported or len(chosen) != 1:
        raise BT2InputError(
            f"pooling {unsupported or chosen or 'none'} is not supported; the encoder pools by mean or CLS token "
            "(set exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token).",
            config_path,
        )
    return chosen[0]


def read_max_length(folder: Path, default: int = 512) -> int:
    """``max_seq_length`` from ``sentence_bert_config.json`` when the folder has one, else ``default``."""
    config_path = folder / "sentence_bert_config.json"
    if config_path.is_file():
        from ..utils.readers import read_json

        value = read_json(config_path, "sentence-transformers config").get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return default


class SentenceEncoder:
    """A frozen text encoder from a local folder: tokenizer + ``hf_text`` backbone + pooling + L2 normalisation.

    Build it with :meth:`from_pretrained`. :meth:`encode` returns float32 unit rows, one per text, in input order.

    Example:

    ```python
    >>> encoder = SentenceEncoder.from_pretrained("path/to/all-MiniLM-L6-v2")
    >>> encoder.encode(["a domestic animal that barks"]).shape
    (1, 384)
    ```
    """

    def __init__(self, path: Path, tokenizer: Any, model_config: Any, pooling: str, max_length: int):
        self.path, self.tokenizer, self.model_config = path, tokenizer, model_config
        self.pooling, self.max_length = pooling, int(max_length)
        self._backbone = None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int | None = None) -> SentenceEncoder:
        """Read a local checkpoint folder's config and tokenizer, check that they belong together (weights load later).

        Args:
            path (`str` or `os.PathLike`): a folder with ``config.json``, ``*.safetensors`` and tokenizer files.
            max_length (`int`, *optional*): truncate texts to this many tokens (default: the folder's
                ``max_seq_length``, else 512, and never more than the model's positions).

        Raises:
            `BT2InputError`: the folder is missing, has no safetensors weights, its config does not load, or its
            tokenizer belongs to another model.
        """
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise BT2InputError("not a model folder (no config.json); pass the folder of a local checkpoint.", folder)
        if not sorted(folder.glob("*.safetensors")):
            raise BT2InputError("no *.safetensors weights in the folder (pickled .bin weights are not read).", folder)
        try:
            model_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
            raise BT2InputError(f"cannot load the config or tokenizer ({error}).", folder) from None
        check_tokenizer_matches_model(tokenizer, model_config, folder)
        positions = getattr(model_config, "max_position_embeddings", None) or 512
        limit = min(max_length or read_max_length(folder), positions - 2 if positions > 2 else positions)
        return cls(folder, tokenizer, model_config, read_pooling(folder), limit)

    @property
    def embedding_dim(self) -> int:
        return int(self.model_config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """sha256 over the stored tensors of the folder's safetensors files, the tokenizer, pooling and length (what
        decides the pooled features; :meth:`encode` normalises them or not)."""
        if self._fingerprint is None:
            from ..fingerprint import combine_fingerprint, fingerprint_safetensors_files

            weights = fingerprint_safetensors_files(sorted(self.path.glob("*.safetensors")))
            identity = combine_fingerprint(weights, self.tokenizer)
            import hashlib

            extra = f"{identity}|pooling={self.pooling}|max_length={self.max_length}"
            self._fingerprint = "sha256:" + hashlib.sha256(extra.encode()).hexdigest()
        return self._fingerprint

    @property
    def backbone(self):
        """The ``hf_text`` backbone with the folder's weights, in eval mode (loaded on first use)."""
        if self._backbone is None:
            from .hf_text import HFTextBackbone

            backbone = HFTextBackbone(HFTextBackbone.config_from_pretrained(str(self.path)), self.pooling)
            backbone.load_pretrained_weights(str(self.path), local_files_only=True)
            self._backbone = backbone.eval().requires_grad_(False)
        return self._backbone

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Embed ``texts`` (float32 rows, input order). Texts are batched by length (less padding).

        Args:
            texts (`Sequence[str]`): the texts.
            batch_size (`int`, *optional*, defaults to 32): texts per forward pass.
            normalize (`bool`, *optional*, defaults to `True`): L2-normalise (the sentence embedding); `False`
                returns the pooled features a head on this encoder would take.
        """
        import torch
        from torch.nn import functional as F

        texts = [str(text) for text in texts]
        output = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        backbone = self.backbone
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                features = backbone(**batch)
                features = features.float()
                output[rows] = (F.normalize(features, dim=-1) if normalize else features).numpy()
        return output


__all__ = ["SentenceEncoder", "check_tokenizer_matches_model", "read_max_length", "read_pooling"]
