r"""A series of model updates, v1 → v2 → … → vT, each a BT² step on the previous version.

This is the paper's "sequence of updates" setting (bt2-method §4.1; AlexNet → VGG → ResNet → ViT in the paper): each
version ``v_t`` (t > 1) is trained with BT² against the frozen ``v_{t-1}`` (old) and an independently trained model
of its own architecture (new'). The dimension bookkeeping follows from the BT² head:

- ``v_1`` is a plain model of width ``d_1``;
- ``v_t`` has width ``d_t = D_t + k_t`` (``D_t``: its independent model's width, ``k_t``: extra dims) and its first
  ``d_{t-1}`` dims are tied to ``v_{t-1}``. BT² needs ``D_t + k_t > d_{t-1}``: with growing widths each step must
  add enough extra dims (:func:`plan_series` checks it and says what to change);
- so ``v_t``'s prefix for an older ``v_j`` is ``d_j`` (prefixes nest: the first ``d_j`` dims of ``v_{j+1}`` live in
  ``v_j``'s space, and ``v_{j+2}`` reproduces all of ``v_{j+1}``'s first ``d_{j+1} ≥ d_j`` dims).

:func:`run_series` trains every version with the accelerate trainer, records the lineage in each
``config.compatible_with`` by :func:`bt2_hf.verify.verify_compatibility` (which closes it transitively), and
computes the compatibility matrix ``C[i][j] = M(v_i queries, v_j gallery)`` with AC and AA, plus each version's
self-retrieval against its independently trained twin (the compatibility tax).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..heads import bt2_embedding_dim, validate_bt2_dims
from ..utils.io import atomic_write_text
from .cards import CardSection, write_pipeline_card
from .embedding import embed_split
from .stages import StageSpec, run_stage

logger = logging.getLogger(__name__)

SERIES_METRICS = ("top1", "top5", "map")


@dataclass
class SeriesVersion:
    """One version of a series.

    Args:
        name (`str`): e.g. ``"v1"``; also the sub-directory of the run.
        backbone_type (`str`): a registered backbone (``small_cnn``, ``hf_vision`` …).
        backbone_config (`dict`): its config (for ``hf_vision`` a transformers config dict with ``model_type``).
        feature_dim (`int`): the width of this version's independently trained model (``D_t``); for ``v1``, its
            embedding width ``d_1``.
        extra_dim (`int`, *optional*, defaults to 0): ``k_t``, the BT² extra dims (ignored for ``v1``).
        class_subset (`str`, *optional*): train on these classes only (e.g. ``"0-4"``; ``v1`` only: a BT² step's
            prototypes need every class).
        max_train_samples (`int`, *optional*): class-balanced training images ("more data at each step").
        max_steps (`int`, *optional*, defaults to 300): optimizer steps of each training run of this version.
        learning_rate (`float`, *optional*, defaults to 1e-3): peak learning rate.
        batch_size (`int`, *optional*, defaults to 128): images per step.
        warmup_steps (`int`, *optional*, defaults to 0): linear warm-up steps.
        head_nonlinearity (`str`, *optional*, defaults to `"relu"`): used by the version *and* its independent twin
            (the research code's post-ReLU features for both). They must agree: BT²'s feature ``f`` is matched to the
            twin's embedding, and a post-ReLU ``f`` cannot match a signed one.
        logit_scale (`float`, *optional*, defaults to 1.0): fixed factor on the training classifier's logits (see
            ``BT2Config.logit_scale``); short CPU schedules converge much faster with ~16.
        influence_scale (`float`, *optional*, defaults to 1.0): inverse temperature of BT²'s influence loss (see
            ``BT2MethodConfig.influence_scale``).
        match_ancestors (`bool`, *optional*, defaults to `True`): also train this version's prefix for every version
            older than the previous one directly (BT²'s ``ancestor_prefix_dims``: the old model's prefixes get the
            same influence and matching losses as its whole embedding). Without it, ``v3`` reaches ``v1`` only through
            ``v2``'s whole embedding and loses some of ``v1``'s retrieval on the way.
        init_from_independent (`bool`, *optional*, defaults to `False`): start this version's BT² step from its
            independently trained twin (backbone, feature projection, classifier) instead of a random initialisation
            (see ``ModelArguments.init_from_independent``).
        method_config (`dict`, *optional*): further :class:`~bt2_hf.methods.bt2.BT2MethodConfig` fields for this
            version's BT² step (e.g. ``{"old_match_weight": 10.0}``); ``extra_dim`` and ``influence_scale`` are set
            by the fields above.
    """

    name: str
    backbone_type: str
    backbone_config: dict[str, Any]
    feature_dim: int
    extra_dim: int = 0
    class_subset: str | None = None
    max_train_samples: int | None = None
    max_steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 128
    warmup_steps: int = 0
    head_nonlinearity: str = "relu"
    logit_scale: float = 1.0
    influence_scale: float = 1.0
    match_ancestors: bool = True
    init_from_independent: bool = False
    method_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesVersion:
        """A version from one entry of a series file; unknown keys (typos) are refused with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Series version {data.get('name', '?')!r}: unknown key(s) {unknown}; valid keys are {sorted(known)}."
            )
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                         and f.name not in data)  # fmt: skip
        if missing:
            raise ValueError(f"Series version {data.get('name', '?')!r}: missing required key(s) {missing}.")
        return cls(**data)


def plan_series(versions: Sequence[SeriesVersion]) -> list[dict[str, Any]]:
    """The dimension bookkeeping of a series: each version's width and its prefix for every older version.

    Args:
        versions (`Sequence[SeriesVersion]`): oldest first.

    Returns:
        `list[dict]`: per version ``{"name", "embedding_dim", "compatible_dim", "prefixes": {older name: prefix}}``.

    Raises:
        ValueError: a BT² step with ``feature_dim + extra_dim <= `` the previous width (names the fix), or a class
            subset on a BT² step.

    >>> from bt2_hf.experiments.series import SeriesVersion, plan_series
    >>> plan = plan_series([
    ...     SeriesVersion("v1", "small_cnn", {}, feature_dim=32),
    ...     SeriesVersion("v2", "small_cnn", {}, feature_dim=48, extra_dim=16),
    ...     SeriesVersion("v3", "small_cnn", {}, feature_dim=64, extra_dim=32),
    ... ])
    >>> [(p["name"], p["embedding_dim"], p["prefixes"]) for p in plan]
    [('v1', 32, {}), ('v2', 64, {'v1': 32}), ('v3', 96, {'v1': 32, 'v2': 64})]
    """
    if not versions:
        raise ValueError("A series needs at least one version.")
    names = [v.name for v in versions]
    if len(set(names)) != len(names):
        raise ValueError(f"Version names must be unique, got {names}.")
    plan: list[dict[str, Any]] = []
    for position, version in enumerate(versions):
        clashes = {"extra_dim", "influence_scale", "ancestor_prefix_dims"} & set(version.method_config)
        if clashes:
            raise ValueError(
                f"{version.name}: set {sorted(clashes)} as version fields, not inside method_config (one place each)."
            )
        if position == 0:
            width = version.feature_dim
            plan.append({"name": version.name, "embedding_dim": width, "compatible_dim": width, "prefixes": {}})
            continue
        previous = plan[-1]["embedding_dim"]
        try:
            validate_bt2_dims(version.feature_dim, previous, version.extra_dim)
        except ValueError as error:
            raise ValueError(f"{version.name} (after a {previous}-d version): {error}") from None
        if version.class_subset:
            raise ValueError(
                f"{version.name}: a BT² step trains on every class (its old-model prototypes need one sample per "
                "class); give more data with max_train_samples instead of a class subset."
            )
        prefixes = {older["name"]: older["embedding_dim"] for older in plan}
        plan.append(
            {
                "name": version.name,
                "embedding_dim": bt2_embedding_dim(version.feature_dim, version.extra_dim),
                "compatible_dim": previous,
                "prefixes": prefixes,
            }
        )
    return plan


@dataclass
class SeriesResult:
    """What :func:`run_series` returns (and writes as ``series_results.json``).

    Args:
        plan (`list[dict]`): the dimension bookkeeping (:func:`plan_series`).
        model_dirs (`dict[str, str]`): each version's checkpoint.
        independent_dirs (`dict[str, str]`): each version's independently trained twin.
        matrix (`dict`): :meth:`~bt2_hf.retrieval.compatibility.CompatibilityMatrix.to_dict` (values, AC, AA).
        self_retrieval (`dict`): per version, its own and its independent twin's self-retrieval metrics.
        lineage (`dict`): per version, its ``compatible_with`` entries (name, prefix, fingerprint, via).
        seconds (`float`): wall time.
    """

    plan: list[dict[str, Any]]
    model_dirs: dict[str, str]
    independent_dirs: dict[str, str]
    matrix: dict[str, Any] = field(default_factory=dict)
    self_retrieval: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a refusal to reuse a changed version tells the user (the Python arguments and the `bt2 series` flags).
_REUSE_FIX = (
    "use a new output_dir, or retrain: --no_reuse (reuse=False) retrains every version, --retrain_changed "
    "(retrain_changed=True) only the versions whose settings changed"
)


def version_stage(
    version: SeriesVersion,
    output_dir: Path,
    method: str,
    *,
    data_dir: str | None,
    seed: int,
    old_model: str | None = None,
    independent_model: str | None = None,
    disable_tqdm: bool = False,
    mixed_precision: str | None = None,
    ancestor_prefix_dims: Sequence[int] = (),
) -> StageSpec:
    """The stage that trains ``version`` with ``method``: its independent model, or its BT² step on the previous one."""
    method_config = None
    if method == "bt2":
        method_config = {
            **version.method_config,
            "extra_dim": version.extra_dim,
            "influence_scale": version.influence_scale,
            "ancestor_prefix_dims": list(ancestor_prefix_dims),
        }
    return StageSpec(
        name=version.name,
        output_dir=output_dir,
        method=method,
        backbone_type=version.backbone_type,
        backbone_config=version.backbone_config,
        steps=version.max_steps,
        seed=seed,
        batch_size=version.batch_size,
        learning_rate=version.learning_rate,
        warmup_steps=version.warmup_steps,
        embedding_dim=version.feature_dim if method == "independent" else None,
        head_nonlinearity=version.head_nonlinearity,
        logit_scale=version.logit_scale,
        old_model=old_model,
        independent_model=independent_model,
        init_from_independent=version.init_from_independent and method == "bt2",
        data_dir=data_dir,
        class_subset=version.class_subset if method == "independent" else None,
        max_train_samples=version.max_train_samples,
        method_config=method_config,
        logging_steps=max(1, min(50, version.max_steps)),
        mixed_precision=mixed_precision,
        disable_tqdm=disable_tqdm,
    )


def record_lineage(
    model_dirs: Sequence[str | Path], eval_data: Any, dataset_name: str = "fashion_mnist", split: str = "test"
) -> dict:
    """Verify each version against its predecessor, oldest first, on the held-out ``eval_data``.

    Each step is :func:`bt2_hf.verify.verify_compatibility` (the one writer of measured entries): it measures
    old/old, new/old and new/new, records the entry with its criterion (failing or not) in the version's
    ``config.json`` and closes the lineage: ``v3`` inherits ``v1`` at ``v1``'s prefix via ``v2``. The weights are
    untouched (same fingerprint).

    Returns:
        `dict`: per version, its ``compatible_with`` entries.
    """
    from ..modeling_bt2 import BT2Model
    from ..verify import verify_compatibility

    paths = [Path(p) for p in model_dirs]
    lineage: dict[str, Any] = {}
    for index in range(1, len(paths)):
        verify_compatibility(
            paths[index], paths[index - 1], eval_data, split=split, dataset_name=dataset_name, update_card=False
        )
        config = BT2Model.config_class.from_pretrained(paths[index])
        lineage[paths[index].name] = [
            {k: entry.get(k) for k in ("name_or_path", "embedding_dim", "fingerprint", "method", "status", "via",
                                       "criterion")}
            for entry in config.compatible_with
        ]  # fmt: skip
    return lineage


def run_series(
    versions: Sequence[SeriesVersion],
    output_dir: str | Path,
    *,
    data_dir: str | None = None,
    train_data: Any = None,
    eval_data: Any = None,
    eval_samples: int | None = None,
    metrics: Sequence[str] = SERIES_METRICS,
    seed: int = 0,
    reuse: bool = True,
    retrain_changed: bool = False,
    disable_tqdm: bool = False,
    mixed_precision: str | None = None,
) -> SeriesResult:
    """Train v1 → … → vT (each with its independent twin), record the lineage and evaluate the matrix.

    Args:
        versions (`Sequence[SeriesVersion]`): oldest first.
        output_dir (`str` or `Path`): ``<name>/`` holds each version, ``<name>-independent/`` its twin
            (``v1`` is its own independent model).
        data_dir (`str`, *optional*): Fashion-MNIST IDX directory (when ``train_data`` / ``eval_data`` are not given).
        train_data, eval_data (:class:`~bt2_hf.data.ImageClassificationData`, *optional*): in-memory splits.
        eval_samples (`int`, *optional*): class-balanced evaluation images (default: the whole test split).
        metrics (`Sequence[str]`, *optional*): retrieval metrics (default top-1, top-5, mAP).
        seed (`int`, *optional*, defaults to 0): training seed.
        reuse (`bool`, *optional*, defaults to `True`): skip a training run whose output already holds a model
            trained with the same settings (:func:`bt2_hf.experiments.stages.run_stage`); one trained with other
            settings is refused, naming them. `False` retrains every version.
        retrain_changed (`bool`, *optional*, defaults to `False`): retrain the versions whose saved settings differ
            (and, through the reference fingerprints, every version trained against one of them) instead of refusing.
        disable_tqdm (`bool`, *optional*, defaults to `False`): no progress bars.
        mixed_precision (`str`, *optional*): ``no``, ``fp16`` or ``bf16`` for every training run (default: what
            ``accelerate`` is configured with, else fp32). ``bf16`` is the setting for a GPU.

    Returns:
        :class:`SeriesResult`, also written to ``<output_dir>/series_results.json``.
    """
    from ..data import load_fashion_mnist
    from ..retrieval import evaluate_retrieval
    from ..retrieval.compatibility import compatibility_matrix

    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_series(versions)
    if train_data is None:
        train_data = load_fashion_mnist(data_dir, "train")
    if eval_data is None:
        eval_data = load_fashion_mnist(data_dir, "test")
    eval_data = eval_data.take_per_class(eval_samples, seed=seed)

    model_dirs: dict[str, str] = {}
    independent_dirs: dict[str, str] = {}
    previous: Path | None = None
    previous_name: str | None = None
    stage_options = dict(data_dir=data_dir, seed=seed, disable_tqdm=disable_tqdm, mixed_precision=mixed_precision)
    run_options = dict(train_data=train_data, reuse=reuse, retrain_changed=retrain_changed, reuse_fix=_REUSE_FIX)
    for version, step in zip(versions, plan):
        if previous is None:
            path = run_stage(version_stage(version, output_dir / version.name, "independent", **stage_options),
                             **run_options)  # fmt: skip
            independent_dirs[version.name] = str(path)
        else:
            twin_stage = version_stage(version, output_dir / f"{version.name}-independent", "independent",
                                       **stage_options)  # fmt: skip
            twin = run_stage(twin_stage, **run_options)
            independent_dirs[version.name] = str(twin)
            # prefixes of every version older than the previous one, oldest first
            ancestors = [width for name, width in step["prefixes"].items() if name != previous_name]
            stage = version_stage(
                version, output_dir / version.name, "bt2", old_model=str(previous), independent_model=str(twin),
                ancestor_prefix_dims=ancestors if version.match_ancestors else (), **stage_options,
            )  # fmt: skip
            path = run_stage(stage, **run_options)
        model_dirs[version.name] = str(path)
        previous, previous_name = path, version.name

    names = [v.name for v in versions]
    labels = eval_data.labels.numpy()
    embeddings = {name: embed_split(model_dirs[name], eval_data.images) for name in names}
    matrix = compatibility_matrix([embeddings[n] for n in names], labels, names=names, metrics=list(metrics))
    self_retrieval: dict[str, Any] = {}
    for position, name in enumerate(names):
        own = {m: float(matrix.values[m][position, position]) for m in metrics}
        if position == 0:
            self_retrieval[name] = {"model": own}
            continue
        twin = evaluate_retrieval(embed_split(independent_dirs[name], eval_data.images), None, labels, metrics=metrics)
        twin_metrics = {m: float(v) for m, v in twin.metrics.items()}
        self_retrieval[name] = {
            "model": own,
            "independent": twin_metrics,
            "tax": {m: twin_metrics[m] - own[m] for m in metrics},  # compatibility tax (positive: BT² is worse)
        }
    dataset_name = _data_name(eval_data, data_dir)
    lineage = record_lineage([model_dirs[n] for n in names], eval_data, dataset_name=dataset_name, split="test")
    for position, name in enumerate(names):
        write_pipeline_card(
            model_dirs[name], dataset=dataset_name,
            section=_series_section(names, position, plan, matrix.to_dict(), self_retrieval[name]),
        )  # fmt: skip
    result = SeriesResult(
        plan=plan,
        model_dirs=model_dirs,
        independent_dirs=independent_dirs,
        matrix=matrix.to_dict(),
        self_retrieval=self_retrieval,
        lineage=lineage,
        seconds=round(time.perf_counter() - started, 1),
    )
    atomic_write_text(output_dir / "series_results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    logger.info("%s", format_matrix(result))
    return result


def _series_section(
    names: list[str], position: int, plan: list[dict[str, Any]], matrix: dict[str, Any], own: dict[str, Any]
) -> CardSection:
    """A version's place in its series for its card: what it was trained against, and its row of the matrix."""
    name, chain = names[position], " → ".join(names)
    if position == 0:
        role = f"**{name}** is the first version of the series {chain}: a plain {plan[0]['embedding_dim']}-d model."
    else:
        prefixes = ", ".join(f"{older} (first {width} dims)" for older, width in plan[position]["prefixes"].items())
        role = (
            f"**{name}** is version {position + 1} of the series {chain}: a BT² step on {names[position - 1]}, "
            f"{plan[position]['embedding_dim']}-d, trained to be compatible with {prefixes}."
        )
    top1 = matrix["matrix"]["top1"][position]
    row = ", ".join(f"→ {gallery} {100 * value:.1f}" for gallery, value in zip(names, top1) if value is not None)
    text = f"{role}\n\nTop-1 (%) of its queries in each version's gallery (the series' held-out split): {row}."
    if "tax" in own:
        text += (
            f" Its own top-1 is {100 * own['model']['top1']:.1f} against {100 * own['independent']['top1']:.1f} for "
            f"its independently trained twin (compatibility tax {100 * own['tax']['top1']:+.1f} points)."
        )
    return CardSection(pipeline="series", name="role", heading="Place in the series", text=text)


def _data_name(data: Any, data_dir: str | None) -> str:
    if getattr(data, "source", "in-memory") != "in-memory":
        return str(data.source)
    return Path(data_dir).name if data_dir else "fashion_mnist"


def format_matrix(result: SeriesResult, metric: str = "top1") -> str:
    """A plain-text table of the matrix for one metric (percent), with AC and AA."""
    names = result.matrix["names"]
    values = result.matrix["matrix"][metric]
    lines = [
        f"{metric} (%), rows = query model, columns = gallery model",
        "      " + "".join(f"{n:>8}" for n in names),
    ]
    for name, row in zip(names, values):
        lines.append(f"{name:>6}" + "".join(f"{'' if v is None else f'{100 * v:.1f}':>8}" for v in row))
    lines.append(f"AC = {result.matrix['AC'][metric]:.2f}   AA = {100 * result.matrix['AA'][metric]:.1f}")
    return "\n".join(lines)
