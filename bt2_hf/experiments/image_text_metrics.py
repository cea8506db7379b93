"""The image–text experiment's metrics: which searches are measured, with which relevance, and how seeds summarise.

Three searches per method, all over the test split (one image and one caption per scene), with exact relevance:

- ``text_to_old_image``: each caption searches the gallery of *old* image embeddings (the backfill-free case the
  update is for); relevant = the images the caption describes (:func:`bt2_hf.experiments.scenes.scene_relevance`).
- ``text_to_new_image``: each caption searches the new image tower's gallery; same relevance.
- ``new_image_to_old_image``: each image's new embedding searches the old gallery, leaving the query's own image out.

Image → image relevance (:func:`same_objects_relevance`): an image is relevant to another when both hold the same
multiset of (shape, colour) objects, whatever their sizes and places. With "only its own image" the old → old
reference would be trivial (an image always finds its own old embedding first), so both ``new_image_to_old_image`` and
the reference ``old_image_to_old_image`` leave the query's own image out and ask for *another* image with the same
objects; queries whose objects no other test image has are left out of the means (counted in ``num_without_relevant``).
Recall@1 of an image → image search is its top-1 accuracy.

The test split's captions also come in four groups (:func:`caption_groups`): seen attribute pairs and phrasings, a
held-out (shape, colour) pair, a held-out phrasing, or both. :func:`text_metrics_by_group` reports each text search
per group, so a method that does well on the seen captions and falls on the held-out ones shows it (the validation
split has no held-out captions, so the last three groups measure what settings chosen there cannot see).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..retrieval.instance_metrics import (
    InstanceRetrievalResult,
    compatibility_matrix_to_dict,
    instance_compatibility_matrix,
)
from .scenes import scene_relevance

TASKS = {
    "text_to_old_image": ("new_text", "old_image"),
    "text_to_new_image": ("new_text", "new_image"),
    "new_image_to_old_image": ("new_image", "old_image"),
}
REFERENCE_TASK = ("old_image_to_old_image", ("old_image", "old_image"))
SPACES = ("old_image", "new_image", "new_text")
IMAGE_TO_IMAGE = {("old_image", "old_image"), ("new_image", "old_image"), ("new_image", "new_image"),
                  ("old_image", "new_image")}  # fmt: skip


def same_objects_relevance(attributes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``R[i, j]``: image ``j`` holds the same multiset of (shape, colour) objects as image ``i`` (sizes and places
    free); the diagonal is `True` (leave it out with ``leave_one_out``)."""
    same_objects = [
        {"objects": [{"shape": o["shape"], "colour": o["colour"]} for o in a["objects"]], "count": len(a["objects"])}
        for a in attributes
    ]
    return scene_relevance(same_objects, attributes)


class SceneRelevance:
    """The relevance of every (query space, gallery space) pair over one split: captions or images as queries."""

    def __init__(self, caption_attributes: Sequence[Mapping[str, Any]], attributes: Sequence[Mapping[str, Any]]):
        self.caption = scene_relevance(caption_attributes, attributes)
        self.image = same_objects_relevance(attributes)
        others = self.image & ~np.eye(len(self.image), dtype=bool)
        # a tiny split may have no two images with the same objects: then image → image searches are not measured
        self.image_pairs_measurable = bool(others.any())

    def __call__(self, query_space: str, gallery_space: str) -> np.ndarray:
        return self.caption if query_space.endswith("text") else self.image


def method_searches(
    spaces: Mapping[str, Any], relevance: SceneRelevance, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, InstanceRetrievalResult | None]:
    """One method's searches, with their per-query ranks: ``{task: InstanceRetrievalResult or None}`` (`None`: the
    method has no tower for it, or no two images of the split hold the same objects). :func:`searches_to_metrics`
    summarises them; :func:`text_metrics_by_group` breaks the text searches down by caption group.

    Args:
        spaces (`Mapping[str, np.ndarray]`): ``old_image``, and whichever of ``new_image`` / ``new_text`` the method
            has (a text-only method has no new image tower: its tasks that need one are `None`).
        relevance (:class:`SceneRelevance`): of the split the embeddings come from.
    """
    available = [name for name in SPACES if spaces.get(name) is not None]
    tasks = {task: pair for task, pair in TASKS.items() if set(pair) <= set(available)
             and (pair not in IMAGE_TO_IMAGE or relevance.image_pairs_measurable)}  # fmt: skip
    matrix = instance_compatibility_matrix(
        {name: spaces[name] for name in available},
        pairs=list(tasks.values()),
        relevance_fn=relevance,
        leave_one_out=IMAGE_TO_IMAGE,
        ks=ks,
    )
    return {task: (matrix[pair[0]][pair[1]] if task in tasks else None) for task, pair in TASKS.items()}


def searches_to_metrics(searches: Mapping[str, InstanceRetrievalResult | None]) -> dict[str, dict | None]:
    """``{task: {"recall@1": …, "map": …, counts} or None}`` in percent, from :func:`method_searches`."""
    return {task: None if result is None else result.to_dict(percent=True) for task, result in searches.items()}


def method_metrics(
    spaces: Mapping[str, Any], relevance: SceneRelevance, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float] | None]:
    """One method's searches summarised: ``{task: {"recall@1": …, "map": …, counts} or None}`` in percent (see
    :func:`method_searches` for the arguments and when a task is `None`)."""
    return searches_to_metrics(method_searches(spaces, relevance, ks))


CAPTION_GROUPS = ("seen", "novel_pair", "novel_phrasing", "novel_pair_and_phrasing")
TEXT_TASKS = ("text_to_old_image", "text_to_new_image")


def caption_groups(novel_pair: Sequence[bool], novel_template: Sequence[bool]) -> dict[str, np.ndarray]:
    """Split a split's captions into the four :data:`CAPTION_GROUPS` (a partition: every caption is in one).

    Args:
        novel_pair (`Sequence[bool]`): the caption mentions a held-out (shape, colour) pair (the ``novel_pair`` column).
        novel_template (`Sequence[bool]`): it uses a held-out phrasing (the ``novel_template`` column).

    Returns:
        `dict[str, np.ndarray]`: a boolean mask over the captions for each group.
    """
    pair, phrasing = np.asarray(novel_pair, dtype=bool), np.asarray(novel_template, dtype=bool)
    if pair.shape != phrasing.shape:
        raise ValueError(f"novel_pair has {pair.shape} values and novel_template {phrasing.shape}; one per caption.")
    return {"seen": ~pair & ~phrasing, "novel_pair": pair & ~phrasing, "novel_phrasing": ~pair & phrasing,
            "novel_pair_and_phrasing": pair & phrasing}  # fmt: skip


def text_metrics_by_group(
    searches: Mapping[str, InstanceRetrievalResult | None], groups: Mapping[str, np.ndarray]
) -> dict[str, dict[str, dict[str, float | int] | None] | None]:
    """Each text search of one method, per caption group: ``{task: {group: {"recall@1", "map", "num_queries"} or
    None}}`` in percent (`None`: the method has no gallery for the task, or the group has no caption).

    Args:
        searches: the method's :func:`method_searches` (the whole split's searches: the gallery is every image).
        groups: :func:`caption_groups` of the split's captions.

    The numbers are the whole searches' per-caption results restricted to each group, so the groups' means weighted
    by ``num_queries`` give the whole split's.
    """
    out: dict[str, Any] = {}
    for task in TEXT_TASKS:
        result = searches.get(task)
        if result is None:
            out[task] = None
            continue
        evaluated = result.first_relevant_rank > 0
        out[task] = {}
        for group, mask in groups.items():
            members = mask & evaluated
            if not members.any():
                out[task][group] = None
                continue
            out[task][group] = {
                "recall@1": 100.0 * float(np.mean(result.first_relevant_rank[members] == 1)),
                "map": 100.0 * float(np.mean(result.average_precision[members])),
                "num_queries": int(members.sum()),
            }
    return out


def reference_metrics(old_image, relevance: SceneRelevance, ks: Sequence[int] = (1, 5, 10)) -> dict | None:
    """Old image → old images (own image left out): what a new image tower's search of the old gallery must beat
    (`None` when no two images of the split hold the same objects)."""
    if not relevance.image_pairs_measurable:
        return None
    matrix = instance_compatibility_matrix(
        {"old_image": old_image}, pairs=[REFERENCE_TASK[1]], relevance_fn=relevance,
        leave_one_out=[REFERENCE_TASK[1]], ks=ks,
    )  # fmt: skip
    return compatibility_matrix_to_dict(matrix, percent=True)["old_image"]["old_image"]


def full_compatibility_matrix(spaces: Mapping[str, Any], relevance: SceneRelevance) -> dict:
    """Every (query, gallery) pair over (old image, new image, new text), incl. old → old; text is only a query (the
    galleries are image galleries). Image → image pairs leave the query's own image out."""
    pairs = [(query, gallery) for query in SPACES for gallery in ("old_image", "new_image")
             if (query, gallery) not in IMAGE_TO_IMAGE or relevance.image_pairs_measurable]  # fmt: skip
    matrix = instance_compatibility_matrix(
        {name: spaces[name] for name in SPACES}, pairs=pairs, relevance_fn=relevance, leave_one_out=IMAGE_TO_IMAGE
    )
    return compatibility_matrix_to_dict(matrix, percent=True)


def summarise_seeds(per_seed: Sequence[Any]) -> Any:
    """Mean and sample standard deviation of every number across seeds, nested like the inputs (``None`` stays).

    A leaf becomes ``{"mean": …, "sd": …, "values": [...]}`` (``sd`` is 0 with one seed); count fields are kept from
    the first seed.
    """
    first = per_seed[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return {key: summarise_seeds([item[key] for item in per_seed]) for key in first}
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    values = [float(v) for v in per_seed]
    if all(isinstance(v, int) for v in per_seed):
        return first  # counts are the same for every seed (same test split)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd, "values": values}
