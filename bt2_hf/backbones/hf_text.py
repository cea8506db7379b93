"""transformers text encoders (BERT family incl. sentence-transformers MiniLM, CLIP text, …) as BT² backbones."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from . import register_backbone
from ._hf_common import HFBackbone, masked_mean

_POOLER_BY_DEFAULT = {"clip_text_model", "siglip_text_model"}


@register_backbone("hf_text")
class HFTextBackbone(HFBackbone):
    """Any transformers text encoder from its config dict, or a local checkpoint directory.

    Poolings: ``"mean"`` (attention-masked mean, sentence-transformers style), ``"cls"`` (first token),
    ``"pooler"`` (the model's ``pooler_output``; CLIP text's end-of-text token). ``"default"`` picks ``pooler`` for
    CLIP-like text towers and ``mean`` otherwise.
    """

    modality = "text"
    main_input_name = "input_ids"
    poolings = ("default", "mean", "cls", "pooler")

    def default_pooling(self, model_type: str) -> str:
        return "pooler" if model_type in _POOLER_BY_DEFAULT else "mean"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **unused: torch.Tensor,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in inspect.signature(self.model.forward).parameters:
            kwargs["token_type_ids"] = token_type_ids
        outputs = self.model(**kwargs)
        if self.pooling == "pooler":
            return outputs.pooler_output
        if self.pooling == "cls":
            return outputs.last_hidden_state[:, 0]
        return masked_mean(outputs.last_hidden_state, attention_mask)

    def pretrained_processor(self, name_or_path: str, **hub_kwargs: Any) -> Any:
        """The checkpoint's tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
