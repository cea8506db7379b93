"""The settings of ``bt2 text-tower`` (:class:`TextTowerSettings`), in a module that imports nothing heavy, so that the
command's ``--help`` shows its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextTowerSettings:
    """Everything a run of the text-tower experiment depends on (the flags of ``bt2 text-tower``).

    Args:
        output_dir (`str`): where the models and ``results.json`` go.
        data_dir (`str`, *optional*): the Fashion-MNIST IDX directory (default: Debian's).
        text_model (`str`, *optional*): a local pretrained text checkpoint (default: the packaged MiniLM,
            :func:`default_text_model_path`).
        old_model, new_image_model (`str`, *optional*): existing old / new image models (else each is trained).
        old_dim (`int`): width of the old image model (``d_old``).
        new_dim (`int`): width of the new image model and of φ'_text (``D``).
        extra_dim (`int`): ``k`` of the BT² text tower.
        image_steps, image_train_samples, image_batch_size (`int`): each image model's optimizer steps, class-balanced
            training images and batch size.
        text_steps, text_batch_size (`int`): each text tower's optimizer steps and batch size.
        text_finetune_backbone (`bool`): fine-tune the text encoder too (a GPU run); by default only the heads train
            on its frozen features (CPU).
        text_head_learning_rate (`float`): the text towers' heads' peak rate.
        text_learning_rate (`float`): the text encoder's peak rate (used with ``text_finetune_backbone``).
        gallery_size (`int`, *optional*): class-balanced test images in the gallery (default: all).
        seed (`int`): seed of every training run, of the training captions and of the gallery subset.
        disable_tqdm (`bool`): no progress bars.
        retrain_changed (`bool`): retrain a step whose saved model was trained with other settings (default: refuse
            it, naming the settings).
    """

    output_dir: str
    data_dir: str | None = None
    text_model: str | None = None
    old_model: str | None = None
    new_image_model: str | None = None
    old_dim: int = 32
    new_dim: int = 64
    extra_dim: int = 16
    image_steps: int = 300
    image_train_samples: int = 12000
    image_batch_size: int = 128
    text_steps: int = 300
    text_batch_size: int = 32
    text_finetune_backbone: bool = False
    text_head_learning_rate: float = 1e-3
    text_learning_rate: float = 5e-5
    gallery_size: int | None = None
    seed: int = 0
    disable_tqdm: bool = False
    retrain_changed: bool = False
