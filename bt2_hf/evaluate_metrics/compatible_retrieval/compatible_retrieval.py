"""Compatible retrieval: CMC top-k, mAP and mAP@R of query embeddings against a gallery from another model.

Load offline with ``evaluate.load("path/to/bt2_hf/evaluate_metrics/compatible_retrieval")``.
"""

import datasets
import evaluate
import numpy as np

from bt2_hf.retrieval.evaluator import RetrievalEvaluator

_DESCRIPTION = """
Retrieval metrics for backward-compatible embeddings (bt2_hf protocol). Predictions are query embeddings, references
their class labels. The gallery (embeddings of any width + labels) is passed to `compute`; without one, the queries
are their own gallery and each is left out of its own ranking. The wider side is cut to the narrower width (the BT²
prefix rule) and re-normalised before cosine similarity (`renormalize=False` reproduces the BT² research code).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): query embeddings, one per example.
    references (`list[int]`): query class labels.
    gallery_embeddings (`list[list[float]]` or `np.ndarray`, *optional*): gallery embeddings (e.g. the old model's).
    gallery_labels (`list[int]`, *optional*): gallery class labels; required with `gallery_embeddings`.
    same_items (`bool`, *optional*): query row i and gallery row i are the same item (leave-one-out).
    metrics (`list[str]`, *optional*, defaults to `["top1", "top5", "map", "map@r"]`).
    backend (`str`, *optional*, defaults to `"faiss"`): `faiss`, `faiss-ivf`, `faiss-hnsw` or `torch`.
    renormalize (`bool`, *optional*, defaults to `True`).
Returns:
    one float per metric, in [0, 1].
Examples:
    >>> metric = evaluate.load("bt2_hf/evaluate_metrics/compatible_retrieval")
    >>> metric.compute(predictions=[[1, 0], [1, 0], [0, 1], [0, 1]], references=[0, 0, 1, 1], metrics=["top1"])
    {'top1': 1.0}
"""

_CITATION = """
@inproceedings{zhou2023bt2,
  title={BT^2: Backward-compatible Training with Basis Transformation},
  author={Zhou, Yifei and Li, Zilu and Shrivastava, Abhinav and Zhao, Hengshuang and Torralba, Antonio and Tian, Taipeng and Lim, Ser-Nam},
  booktitle={ICCV},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CompatibleRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        gallery_embeddings=None,
        gallery_labels=None,
        same_items=None,
        metrics=("top1", "top5", "map", "map@r"),
        backend="faiss",
        renormalize=True,
    ):
        if gallery_embeddings is not None and gallery_labels is None:
            raise ValueError("gallery_labels are required with gallery_embeddings.")
        evaluator = RetrievalEvaluator(metrics=list(metrics), backend=backend, renormalize=renormalize)
        queries = np.asarray(predictions, dtype=np.float32)
        gallery = None if gallery_embeddings is None else np.asarray(gallery_embeddings, dtype=np.float32)
        result = evaluator.evaluate(queries, gallery, np.asarray(references), gallery_labels, same_items=same_items)
        return result.metrics
