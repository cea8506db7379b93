"""Make a saved bt2_hf model loadable by sentence-transformers, with no code of ours in the checkpoint.

``save_pretrained`` writes three small files beside the weights:

- ``modules.json``: one module, sentence-transformers' own ``Transformer``, at the repo root (the layout of
  sentence-transformers' own checkpoints, so ``AutoModel`` and ``SentenceTransformer`` read the same files);
- ``sentence_bert_config.json``: the module calls the model's ``forward`` and takes its ``embeddings`` output as the
  sentence embedding (already L2-normalised: no pooling or normalisation module is needed);
- ``config_sentence_transformers.json``: ``similarity_fn_name: cosine``.

``SentenceTransformer(dir)`` then loads the model through ``AutoModel`` (``import bt2_hf`` first registers it) with its
tokenizer or image processor, and ``encode`` returns exactly ``BT2Model.encode``. ``truncate_dim=compatible_dim`` gives
the old-compatible prefix; cosine similarity (or ``normalize_embeddings=True``) re-normalises it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_json

MODULES_FILE = "modules.json"
MODULE_CONFIG_FILE = "sentence_bert_config.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
_TRANSFORMER_MODULE = "sentence_transformers.base.modules.transformer.Transformer"


def supports_sentence_transformers(config: Any) -> bool:
    """Text towers with a transformers tokenizer, and image towers (their processor is a transformers one)."""
    from ..backbones import get_backbone_class

    return get_backbone_class(config.backbone_type).sentence_transformers


def write_sentence_transformers_files(directory: str | os.PathLike, config: Any) -> list[str]:
    """Write the sentence-transformers files for ``config``'s model into ``directory``; returns their names."""
    if not supports_sentence_transformers(config):
        return []
    directory = Path(directory)
    modality = config.modality
    atomic_write_json(directory / MODULES_FILE, [{"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER_MODULE}])
    atomic_write_json(
        directory / MODULE_CONFIG_FILE,
        {
            "transformer_task": "feature-extraction",
            "modality_config": {modality: {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding",
        },
    )
    atomic_write_json(
        directory / MODEL_CONFIG_FILE,
        {
            "model_type": "SentenceTransformer",
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    return [MODULES_FILE, MODULE_CONFIG_FILE, MODEL_CONFIG_FILE]
