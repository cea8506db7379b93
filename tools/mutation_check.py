"""Targeted mutation testing of the numeric core: does the suite notice when the maths is broken?

Each mutation replaces one exact snippet of one source file in a *temporary copy* of the repository (``bt2_hf/``,
``tests/``, ``pyproject.toml``) — the real files are never touched — and runs the tests meant to guard that code on
the copy. A mutation is *killed* when those tests fail, *survived* when they pass. The places covered are the ones
whose numbers users see: ``heads.py``, ``losses.py``, ``methods/`` and ``retrieval/metrics.py``; ``--place rewritten``
runs the mutations used to check the tests that guard ``W_o``, the precomputed targets and the compatibility report.

A mutation whose snippet is no longer in the file (someone changed that line) is reported as ``stale``, not run.
Every survivor needs an explanation in benchmarks/README.md ("Mutation testing"): it is either equivalent (no number
a user sees can change) or a missing test.

Usage (from the repository root; not part of CI: each mutation starts a pytest process, ~10-60 s each)::

    python tools/mutation_check.py                    # the four places
    python tools/mutation_check.py --place heads      # one place
    python tools/mutation_check.py --only losses-3 heads-1
    python tools/mutation_check.py --list
    python tools/mutation_check.py --json mutation_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("bt2_hf", "tests", "pyproject.toml")

TESTS = {
    "heads": ["tests/core/test_heads.py"],
    "losses": ["tests/methods/test_losses_and_methods.py"],
    "methods": [
        "tests/methods/test_losses_and_methods.py",
        "tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation",
        "tests/training/test_train.py::test_bct_loss_terms_against_an_independent_computation",
    ],
    "metrics": ["tests/retrieval/test_evaluator.py", "tests/retrieval/test_compatibility.py"],
    "rewritten": [],  # each mutation names its own tests
}


@dataclass
class Mutation:
    id: str
    file: str
    find: str
    replace: str
    description: str
    tests: tuple[str, ...] = ()  # defaults to TESTS[place]

    @property
    def place(self) -> str:
        return self.id.rsplit("-", 1)[0]


M = Mutation
# fmt: off
MUTATIONS = [
    # ---- heads.py
    M("heads-1", "bt2_hf/heads.py", "rotation = torch.linalg.matrix_exp(skew - skew.T)",
      "rotation = torch.linalg.matrix_exp(skew + skew.T)", "P, Q: exp of a symmetric matrix (not a rotation)"),
    M("heads-2", "bt2_hf/heads.py", "return self.base.float() @ rotation", "return rotation @ self.base.float()",
      "P, Q: factors in the other order (still orthogonal, a different map)"),
    M("heads-3", "bt2_hf/heads.py", "return inputs @ self.weight.T.to(inputs.dtype)",
      "return inputs @ self.weight.to(inputs.dtype)", "OrthogonalLinear applies Wᵀ instead of W"),
    M("heads-4", "bt2_hf/heads.py", "q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)", "q = q",
      "no QR sign correction (base not Haar-distributed)"),
    M("heads-5", "bt2_hf/heads.py", "        self.base.copy_(q.to(self.base.dtype))\n        self.skew.zero_()",
      "        self.base.copy_(q.to(self.base.dtype))", "reset_parameters keeps the old skew"),
    M("heads-6", "bt2_hf/heads.py",
      "        hidden = self.projection(pooled)\n        if self.nonlinearity == \"relu\":\n            hidden = F.relu(hidden)\n        embeddings = unit_rows(hidden)",
      "        hidden = self.projection(pooled)\n        if self.nonlinearity != \"relu\":\n            hidden = F.relu(hidden)\n        embeddings = unit_rows(hidden)",
      "LinearHead: ReLU condition inverted"),
    M("heads-7", "bt2_hf/heads.py", "compatible = unit_rows(embeddings[:, : self.compatible_dim])",
      "compatible = embeddings[:, : self.compatible_dim]", "LinearHead: compatible prefix not re-normalised"),
    M("heads-8", "bt2_hf/heads.py", "logits = self.logit_scale * self.classifier(embeddings)",
      "logits = self.classifier(embeddings)", "LinearHead: logit_scale ignored"),
    M("heads-9", "bt2_hf/heads.py",
      "        hidden = self.projection(pooled)\n        if self.nonlinearity == \"relu\":\n            hidden = F.relu(hidden)\n        features = ",
      "        hidden = self.projection(pooled)\n        if self.nonlinearity != \"relu\":\n            hidden = F.relu(hidden)\n        features = ",
      "BT² head: ReLU condition inverted"),
    M("heads-10", "bt2_hf/heads.py", "features = unit_rows(hidden[:, : self.feature_dim])",
      "features = hidden[:, : self.feature_dim]", "BT² head: f not normalised"),
    M("heads-11", "bt2_hf/heads.py", "features = unit_rows(hidden[:, : self.feature_dim])",
      "features = unit_rows(hidden[:, -self.feature_dim :])", "BT² head: f from the last rows of h"),
    M("heads-12", "bt2_hf/heads.py", "added = unit_rows(self.added_projection(hidden))",
      "added = self.added_projection(hidden)", "BT² head: added branch a not normalised"),
    M("heads-13", "bt2_hf/heads.py",
      "transformed = torch.cat([added, self.feature_scale * self.feature_rotation(features)], dim=-1)",
      "transformed = torch.cat([self.feature_scale * self.feature_rotation(features), added], dim=-1)",
      "BT² head: z = [C·P f ; a] instead of [a ; C·P f]"),
    M("heads-14", "bt2_hf/heads.py", "self.feature_scale * self.feature_rotation(features)], dim=-1)",
      "self.feature_rotation(features)], dim=-1)", "BT² head: C dropped"),
    M("heads-15", "bt2_hf/heads.py", "old_block = self.old_rotation(transformed[:, : self.old_embedding_dim])",
      "old_block = transformed[:, : self.old_embedding_dim]", "BT² head: Q not applied"),
    M("heads-16", "bt2_hf/heads.py", "self.norm_constant = math.sqrt(float(extra_dim > 0) + feature_scale**2)",
      "self.norm_constant = math.sqrt(feature_scale**2)", "BT² head: wrong normalising constant"),
    M("heads-17", "bt2_hf/heads.py", "compatible_embeddings=unit_rows(old_block),",
      "compatible_embeddings=old_block,", "BT² head: b̂ not re-normalised"),
    M("heads-18", "bt2_hf/heads.py", "logits = self.logit_scale * self.classifier(features)",
      "logits = self.classifier(features)", "BT² head: logit_scale ignored"),
    M("heads-19", "bt2_hf/heads.py", "scaled = transformed[:, self.extra_dim :] / self.feature_scale",
      "scaled = transformed[:, self.extra_dim :] * self.feature_scale", "recover_features: × C instead of ÷ C"),
    M("heads-20", "bt2_hf/heads.py",
      "old_block = raw[:, : self.old_embedding_dim] @ self.old_rotation.weight.to(raw.dtype)",
      "old_block = raw[:, : self.old_embedding_dim] @ self.old_rotation.weight.T.to(raw.dtype)",
      "recover_features: Q instead of Qᵀ"),
    M("heads-21", "bt2_hf/heads.py", "if bt2_embedding_dim(feature_dim, extra_dim) <= old_embedding_dim:",
      "if bt2_embedding_dim(feature_dim, extra_dim) < old_embedding_dim:", "width rule accepts k + D = D_old"),
    M("heads-22", "bt2_hf/heads.py", "if extra_dim < 0:", "if extra_dim < -1:", "negative extra_dim accepted"),
    # ---- losses.py
    M("losses-1", "bt2_hf/losses.py", "return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)",
      "return F.cross_entropy(logits.float(), labels)", "classification: label smoothing ignored"),
    M("losses-2", "bt2_hf/losses.py", "return embeddings[:, :old_dim].float() @ prototypes.float().T",
      "return embeddings[:, -old_dim:].float() @ prototypes.float().T", "influence logits from the last d_old dims"),
    M("losses-3", "bt2_hf/losses.py", "if embeddings.shape[1] < old_dim:", "if embeddings.shape[1] < 0:",
      "no width check: a narrower embedding silently scores against truncated prototypes"),
    M("losses-4", "bt2_hf/losses.py", "return F.cross_entropy(scale * logits, labels, label_smoothing=label_smoothing)",
      "return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)", "influence: scale ignored"),
    M("losses-5", "bt2_hf/losses.py", "return F.cross_entropy(scale * logits, labels, label_smoothing=label_smoothing)",
      "return F.cross_entropy(scale * logits, labels)", "influence: label smoothing ignored"),
    M("losses-6", "bt2_hf/losses.py", "return 1.0 - cosine.mean()", "return 1.0 - cosine.sum()",
      "matching: sum instead of mean"),
    M("losses-7", "bt2_hf/losses.py", "* F.normalize(targets.float(), dim=-1)).sum(dim=-1)",
      "* targets.float()).sum(dim=-1)", "matching: targets not normalised"),
    M("losses-8", "bt2_hf/losses.py", "cosine = (F.normalize(predictions.float(), dim=-1) *",
      "cosine = (predictions.float() *", "matching: predictions not normalised"),
    M("losses-9", "bt2_hf/losses.py", "    if predictions.shape != targets.shape:\n",
      "    if False:\n", "matching: no shape check (broadcasting silently)"),
    # ---- methods/
    M("methods-1", "bt2_hf/methods/bt2.py",
      "\"classification_loss\": classification_loss(outputs.logits, labels, config.label_smoothing)",
      "\"classification_loss\": classification_loss(outputs.logits, labels)", "BT²: label smoothing ignored"),
    M("methods-2", "bt2_hf/methods/bt2.py",
      "* influence_loss(outputs.compatible_embeddings, self.prototypes, labels, scale=config.influence_scale)",
      "* influence_loss(outputs.embeddings, self.prototypes, labels, scale=config.influence_scale)",
      "BT²: influence on the raw embedding prefix instead of b̂"),
    M("methods-3", "bt2_hf/methods/bt2.py",
      "* influence_loss(outputs.compatible_embeddings, self.prototypes, labels, scale=config.influence_scale)",
      "* influence_loss(outputs.compatible_embeddings, self.prototypes, labels)", "BT²: influence_scale ignored"),
    M("methods-4", "bt2_hf/methods/bt2.py", "\"old_match_loss\": config.old_match_weight",
      "\"old_match_loss\": config.new_match_weight", "BT²: old match weighted by the new-match weight"),
    M("methods-5", "bt2_hf/methods/bt2.py", "* cosine_matching_loss(outputs.compatible_embeddings, targets[\"old\"]),",
      "* cosine_matching_loss(outputs.embeddings[:, : targets[\"old\"].shape[1]], targets[\"old\"]),",
      "BT²: old match on the raw prefix instead of b̂"),
    M("methods-6", "bt2_hf/methods/bt2.py",
      "\"new_match_loss\": config.new_match_weight * cosine_matching_loss(outputs.features, targets[\"independent\"]),",
      "\"new_match_loss\": config.new_match_weight * cosine_matching_loss(outputs.features, targets[\"independent\"].flip(0)),",
      "BT²: f matched to another sample's independent embedding"),
    M("methods-7", "bt2_hf/methods/bt2.py", "\"influence_loss\": config.influence_weight\n",
      "\"influence_loss\": config.old_match_weight\n", "BT²: influence weighted by the old-match weight"),
    M("methods-8", "bt2_hf/methods/bt2.py", "prefix = F.normalize(compatible[:, :width], dim=-1)",
      "prefix = compatible[:, :width]", "BT² ancestors: prefix not re-normalised"),
    M("methods-9", "bt2_hf/methods/bt2.py", "\"ancestor_match_loss\": config.old_match_weight * match,",
      "\"ancestor_match_loss\": config.new_match_weight * match,", "BT² ancestors: wrong weight"),
    M("methods-10", "bt2_hf/methods/bt2.py", "prefix, self.prototypes[:, :width], labels, scale=config.influence_scale",
      "prefix, self.prototypes[:, :width], labels", "BT² ancestors: influence_scale ignored"),
    M("methods-11", "bt2_hf/methods/bt2.py", "feature_dim = reference_dims[\"independent\"]",
      "feature_dim = reference_dims[\"old\"]", "BT²: D taken from the old model"),
    M("methods-12", "bt2_hf/methods/bt2.py", "too_wide = [d for d in self.config.ancestor_prefix_dims if d >= reference_dims[\"old\"]]",
      "too_wide = [d for d in self.config.ancestor_prefix_dims if d > reference_dims[\"old\"]]",
      "BT²: an ancestor prefix as wide as the old embedding accepted"),
    M("methods-13", "bt2_hf/methods/bt2.py", "if self.feature_scale <= 0:", "if self.feature_scale < 0:",
      "BT²: feature_scale 0 accepted"),
    M("methods-14", "bt2_hf/methods/bct.py", "\"classification_loss\": classification_loss(outputs.logits, labels, smoothing),",
      "\"classification_loss\": classification_loss(outputs.logits, labels),", "BCT: label smoothing ignored"),
    M("methods-15", "bt2_hf/methods/bct.py", "outputs.embeddings, self.prototypes, labels, smoothing,",
      "outputs.compatible_embeddings, self.prototypes, labels, smoothing,",
      "BCT: influence on the re-normalised prefix instead of the raw one"),
    M("methods-16", "bt2_hf/methods/bct.py", "outputs.embeddings, self.prototypes, labels, smoothing,",
      "outputs.embeddings, self.prototypes, labels, 0.0,", "BCT: influence without label smoothing"),
    M("methods-17", "bt2_hf/methods/bct.py", "embedding_dim = old_dim if embedding_dim is None else embedding_dim",
      "embedding_dim = 128 if embedding_dim is None else embedding_dim", "BCT: default width not the old width"),
    M("methods-18", "bt2_hf/methods/bct.py", "if embedding_dim < old_dim:", "if embedding_dim < 0:",
      "BCT: a narrower embedding accepted"),
    M("methods-19", "bt2_hf/methods/independent.py",
      "classification_loss(outputs.logits, labels, self.config.label_smoothing)",
      "classification_loss(outputs.logits, labels)", "independent: label smoothing ignored"),
    M("methods-20", "bt2_hf/methods/base.py", "if not 0.0 <= self.label_smoothing < 1.0:",
      "if not 0.0 <= self.label_smoothing <= 1.0:", "label_smoothing = 1 accepted"),
    M("methods-21", "bt2_hf/methods/base.py", "if item.name.endswith(\"_weight\") and getattr(self, item.name) < 0:",
      "if item.name.endswith(\"_weight\") and getattr(self, item.name) < -1:", "negative loss weights accepted"),
    M("methods-22", "bt2_hf/methods/base.py", "if self.influence_scale <= 0:", "if self.influence_scale < 0:",
      "influence_scale 0 accepted"),
    M("methods-23", "bt2_hf/methods/base.py", "        if self.uses_prototypes and prototypes is None:\n",
      "        if False:\n", "a prototype method prepared without W_o"),
    # ---- retrieval/metrics.py
    M("metrics-1", "bt2_hf/retrieval/metrics.py", "return relevant_topk[:, :k].any(axis=1)",
      "return relevant_topk[:, : k + 1].any(axis=1)", "top-k looks at k + 1 neighbours"),
    M("metrics-2", "bt2_hf/retrieval/metrics.py", "return relevant_topk[:, :k].any(axis=1)",
      "return relevant_topk[:, :k].all(axis=1)", "top-k needs every neighbour relevant"),
    M("metrics-3", "bt2_hf/retrieval/metrics.py", "within_r = ranks[None, :] <= num_relevant[:, None]",
      "within_r = ranks[None, :] < num_relevant[:, None]", "mAP@R stops one rank early"),
    M("metrics-4", "bt2_hf/retrieval/metrics.py", "(precision * relevant).sum(axis=1) / num_relevant, np.nan)",
      "(precision * relevant).sum(axis=1) / width, np.nan)", "mAP@R divides by K instead of R"),
    M("metrics-5", "bt2_hf/retrieval/metrics.py", "precision = np.cumsum(relevant, axis=1) / ranks[None, :]",
      "precision = relevant / ranks[None, :]", "mAP@R: precision without the cumulative count"),
    M("metrics-6", "bt2_hf/retrieval/metrics.py", "if len(num_relevant) and num_relevant.max(initial=0) > width:",
      "if False:", "mAP@R: no error when fewer than R neighbours were fetched"),
    M("metrics-7", "bt2_hf/retrieval/metrics.py", "group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]",
      "group_end[:, :-1] = True", "mAP: ties not grouped"),
    M("metrics-8", "bt2_hf/retrieval/metrics.py",
      "contribution = np.where(group_end, (true_positives - previous_tp) * (true_positives / ranks[None, :]), 0.0)",
      "contribution = np.where(group_end, true_positives * (true_positives / ranks[None, :]), 0.0)",
      "mAP: recall step not differenced"),
    M("metrics-9", "bt2_hf/retrieval/metrics.py",
      "previous_tp[:, 1:] = np.maximum.accumulate(tp_at_ends, axis=1)[:, :-1]",
      "previous_tp[:, 1:] = tp_at_ends[:, :-1]", "mAP: previous group's count lost across a tie group"),
    M("metrics-10", "bt2_hf/retrieval/metrics.py",
      "return np.where(num_relevant > 0, contribution.sum(axis=1) / num_relevant, np.nan)",
      "return np.where(num_relevant > 0, contribution.sum(axis=1) / width, np.nan)",
      "mAP divides by the gallery size"),
    M("metrics-11", "bt2_hf/retrieval/metrics.py",
      "sorted_scores, order = torch.sort(score_tensor, dim=1, descending=True)",
      "sorted_scores, order = torch.sort(score_tensor, dim=1, descending=False)", "mAP ranks ascending"),
    M("metrics-12", "bt2_hf/retrieval/metrics.py", "negative = float(np.mean(before & ~after))",
      "negative = float(np.mean(~before & after))", "negative flip rate counts positive flips"),
    M("metrics-13", "bt2_hf/retrieval/metrics.py", "\"delta\": positive - negative}",
      "\"delta\": negative - positive}", "flip delta sign"),
    M("metrics-14", "bt2_hf/retrieval/metrics.py", "    if before.shape != after.shape:\n",
      "    if False:\n", "flip rates of different query sets"),
    M("metrics-15", "bt2_hf/retrieval/metrics.py", "if key in {\"map\", \"map@all\"}:", "if key in {\"map@all\"}:",
      "metric name 'map' not recognised"),
    M("metrics-16", "bt2_hf/retrieval/metrics.py",
      "(\"top-\", \"cmc\"), (\"top\", \"cmc\"), (\"cmc@\", \"cmc\"), (\"recall@\", \"recall\")",
      "(\"top-\", \"cmc\"), (\"top\", \"cmc\"), (\"cmc@\", \"cmc\"), (\"recall@\", \"cmc\")",
      "recall@k parsed as CMC (same numbers, another kind)"),
    M("metrics-17", "bt2_hf/retrieval/metrics.py", "and int(key[len(prefix) :]) > 0:", "and int(key[len(prefix) :]) >= 0:",
      "top0 accepted"),
    # ---- the rewritten tests (issue 15): each mutation names the test that must fail
    M("rewritten-1", "bt2_hf/retrieval/compatibility.py",
      "criterion = {name: results[\"new/old\"].metrics[name] > results[\"old/old\"].metrics[name] for name in names}",
      "criterion = {name: results[\"new/old\"].metrics[name] >= results[\"old/old\"].metrics[name] for name in names}",
      "criterion not strict", ("tests/retrieval/test_compatibility.py",)),
    M("rewritten-2", "bt2_hf/retrieval/compatibility.py", "denominator = independent - old_old",
      "denominator = independent - new_old", "update gain: wrong denominator", ("tests/retrieval/test_compatibility.py",)),
    M("rewritten-3", "bt2_hf/retrieval/compatibility.py", "tax[name] = indep - results[\"new/new\"].metrics[name]",
      "tax[name] = results[\"new/new\"].metrics[name] - indep", "tax sign", ("tests/retrieval/test_compatibility.py",)),
    M("rewritten-4", "bt2_hf/retrieval/compatibility.py", "return float(np.mean(matrix[rows, cols] > matrix[cols, cols]))",
      "return float(np.mean(matrix[rows, cols] >= matrix[cols, cols]))", "AC counts ties",
      ("tests/retrieval/test_compatibility.py",)),
    M("rewritten-5", "bt2_hf/retrieval/compatibility.py", "rows, cols = np.tril_indices(matrix.shape[0])\n",
      "rows, cols = np.tril_indices(matrix.shape[0], k=-1)\n", "AA without the diagonal",
      ("tests/retrieval/test_compatibility.py",)),
    M("rewritten-6", "bt2_hf/training/prototypes.py", "return sums / counts[:, None]",
      "return torch.nn.functional.normalize(sums / counts[:, None], dim=-1)", "W_o re-normalised",
      ("tests/training/test_train.py::test_prototypes_are_numpy_class_means_of_the_old_embeddings",
       "tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation")),
    M("rewritten-7", "bt2_hf/training/prototypes.py", "counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))",
      "counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype)); counts[0] += 1",
      "W_o: one class's count off by one",
      ("tests/training/test_train.py::test_prototypes_are_numpy_class_means_of_the_old_embeddings",
       "tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation")),
    M("rewritten-8", "bt2_hf/training/trainer.py", "for images, labels, _ in no_grad_pass(_PROTOTYPE_EPOCH, args.prototype_augmentation, True)",
      "for images, labels, _ in no_grad_pass(_PROTOTYPE_EPOCH, args.prototype_augmentation, True) if labels.min() > 0",
      "W_o: trainer drops the batches that hold class 0 (a class-mean over part of the data)",
      ("tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation",)),
    M("rewritten-9", "bt2_hf/training/trainer.py", "table[rows.to(device)] = ref.embed(images)",
      "table[rows.to(device)] = ref.embed(images.flip(-1))",
      "precomputed targets: embeddings of other (mirrored) images",
      ("tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation",)),
    M("rewritten-10", "bt2_hf/training/trainer.py", "targets[name] = precomputed[name][batch[\"index\"].to(device)]",
      "targets[name] = precomputed[name][batch[\"index\"].flip(0).to(device)]",
      "precomputed targets read for the wrong samples",
      ("tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation",)),
    M("rewritten-11", "bt2_hf/training/trainer.py", "loss = sum(value for key, value in losses.items() if key.endswith(\"_loss\"))",
      "loss = sum(value for key, value in losses.items() if key.endswith(\"_loss\") and key != \"influence_loss\")",
      "the optimised (and logged) total drops a term",
      ("tests/training/test_train.py::test_bt2_loss_terms_against_an_independent_computation",)),
]


def _copy_repository(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)


# Imported once by this process, inherited by every forked test run (saves the import time per mutation). Never
# bt2_hf itself: each run must import the mutated copy.
PRELOAD = ("numpy", "scipy.linalg", "torch", "transformers", "transformers.modeling_utils", "safetensors.torch",
           "sklearn.metrics", "faiss", "accelerate", "pytest")  # fmt: skip
# What tests/conftest.py sets before huggingface_hub is imported (it reads them at import): set them before preloading.
PRELOAD_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def _preload() -> None:
    import importlib

    os.environ.update(PRELOAD_ENV)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _forked_pytest(copy: Path, arguments: list[str]) -> None:  # pragma: no cover - runs in the child
    os.chdir(copy)
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(copy))
    os.environ["PYTHONPATH"] = str(copy)  # for processes the tests start
    import pytest

    import bt2_hf

    if not Path(bt2_hf.__file__).resolve().is_relative_to(copy.resolve()):
        os._exit(3)
    os._exit(int(pytest.main(arguments)))


def _run_tests(copy: Path, tests: list[str], timeout: int, fork: bool) -> tuple[str, float, str]:
    arguments = ["-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    if fork:
        log = copy / ".mutation-run.log"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            with open(log, "w") as handle:
                os.dup2(handle.fileno(), 1)
                os.dup2(handle.fileno(), 2)
                try:
                    _forked_pytest(copy, arguments)
                finally:
                    os._exit(4)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - started > timeout:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return "timeout", time.perf_counter() - started, ""
            time.sleep(0.2)
        code = os.waitstatus_to_exitcode(status)
        tail = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        if code == 3:
            raise SystemExit(f"The temporary copy {copy} is not what the tests import; cannot test mutations.")
    else:
        env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, "-m", "pytest", *arguments]
        try:
            result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - started, ""
        code, tail = result.returncode, (result.stdout + result.stderr).strip().splitlines()
    return ("passed" if code == 0 else "failed"), time.perf_counter() - started, "\n".join(tail[-15:])


def _check_copy_is_imported(copy: Path) -> None:
    """The copy's bt2_hf must shadow any installed one, or every mutation would survive."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    where = subprocess.run([sys.executable, "-c", "import bt2_hf; print(bt2_hf.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"The temporary copy is not what Python imports ({where}); cannot test mutations.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--place", action="append", choices=sorted(TESTS), help="only these places (repeatable)")
    parser.add_argument("--only", nargs="+", help="only these mutation ids")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test run (a timeout counts as killed)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test set")
    parser.add_argument(
        "--no-fork", action="store_true", help="start a fresh Python per run instead of forking a preloaded one"
    )
    args = parser.parse_args(argv)
    fork = hasattr(os, "fork") and not args.no_fork

    places = args.place or ["heads", "losses", "methods", "metrics"]
    selected = [m for m in MUTATIONS if (m.id in args.only if args.only else m.place in places)]
    if args.list:
        for m in selected:
            print(f"{m.id:13s} {m.file:36s} {m.description}")
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="bt2-mutations-") as scratch:
        scratch = Path(scratch)
        pristine = scratch / "pristine"
        _copy_repository(pristine)
        if fork:
            _preload()
        else:
            _check_copy_is_imported(pristine)
        if not args.no_baseline:  # every test set must pass unmutated, or "killed" would mean nothing
            for tests in sorted({tuple(m.tests or TESTS[m.place]) for m in selected}):
                status, seconds, tail = _run_tests(pristine, list(tests), args.timeout, fork)
                print(f"baseline {' '.join(tests)}: {status} ({seconds:.0f} s)", flush=True)
                if status != "passed":
                    print(tail)
                    return 2
        for mutation in selected:
            source = (pristine / mutation.file).read_text()
            count = source.count(mutation.find)
            if count != 1:
                status, seconds, tail = ("stale" if count == 0 else "ambiguous"), 0.0, ""
            else:
                copy = scratch / mutation.id
                shutil.copytree(pristine, copy, ignore=shutil.ignore_patterns("__pycache__", ".mutation-run.log"))
                (copy / mutation.file).write_text(source.replace(mutation.find, mutation.replace))
                outcome, seconds, tail = _run_tests(copy, list(mutation.tests or TESTS[mutation.place]), args.timeout, fork)
                status = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}[outcome]
                shutil.rmtree(copy, ignore_errors=True)
            results.append({"id": mutation.id, "file": mutation.file, "description": mutation.description,
                            "status": status, "seconds": round(seconds, 1)})  # fmt: skip
            print(f"{mutation.id:13s} {status:16s} {seconds:6.0f} s  {mutation.description}", flush=True)

    print("\nplace      killed / run   score   survivors")
    for place in dict.fromkeys(r["id"].rsplit("-", 1)[0] for r in results):
        rows = [r for r in results if r["id"].rsplit("-", 1)[0] == place]
        run = [r for r in rows if r["status"] not in ("stale", "ambiguous")]
        killed = [r for r in run if r["status"].startswith("killed")]
        survivors = ", ".join(r["id"] for r in run if r["status"] == "survived") or "-"
        score = f"{100 * len(killed) / len(run):.0f}%" if run else "-"
        print(f"{place:10s} {len(killed):6d} / {len(run):<5d} {score:>6s}   {survivors}")
    skipped = [r["id"] for r in results if r["status"] in ("stale", "ambiguous")]
    if skipped:
        print(f"not run (snippet changed or ambiguous; update MUTATIONS): {', '.join(skipped)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
