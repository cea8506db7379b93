"""``bt2 verify``: measure whether a new model may search an old model's galleries, and record it in its config.

Embeds a named held-out split with both models (and an independent one), evaluates old→old, new→old and new→new
with the one evaluator, judges ``M(new→old) > M(old→old)`` on top-1 and mAP, and writes a measured
``compatible_with`` entry (data set, split, size, hash, metrics, criterion, margin, date, version) into
``NEW/config.json``, then refreshes ``NEW/README.md``. A failing criterion is recorded as failing; the command then
exits with status 1 (0 when it passes, 2 on bad input).

With a retrieval set as --data (queries, documents and relevance judgements), it measures instance-level retrieval
instead: old→old (the old model's queries against its documents), new→old (the new model's queries against the old
documents) and new→new, with Recall@10 (the fraction of each query's relevant documents in its first 10), MRR@10
and nDCG@10 (plus top-1 and mAP, recorded), and judges the criterion on Recall@10, MRR@10 and nDCG@10. A retrieval
set is a folder holding

  queries.jsonl   {"id": "q1", "text": "a domesticated feline"}            one query a line
  corpus.jsonl    {"id": "d1", "text": "cat"}  or  {"id": "d1", "image": "images/1.png"}   one document a line
  qrels.jsonl     {"query_id": "q1", "corpus_id": "d1", "score": 1}       (or qrels/<split>.jsonl; score ≥ 0)

or a datasets.DatasetDict saved with save_to_disk with splits queries, corpus and qrels (or qrels_<split>). Only
queries with a relevant document (score > 0) are evaluated; the whole corpus is searched. Caption → image: --old is
the old image model, --old_query the old system's text encoder, NEW a text model (e.g. adapted into the old space
with bt2 adapt), --new_document optionally the new image model.

Examples::

    bt2 verify out/bt2 --old out/old --data fashion_mnist --split test
    bt2 verify out/bt2 --old org/old-model --data path/to/imagefolder --split validation --independent out/indep
"""

from __future__ import annotations

import argparse
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)


EXAMPLES = """\
bt2 verify bt2_demo_output/models/bt2 --old bt2_demo_output/models/old --data fashion_mnist --split test
bt2 verify runs/mpnet-adapted --old runs/minilm --data reverse_dictionary/ --split test   # a retrieval set (qrels)
bt2 verify runs/text-tower --old runs/old-cnn --old_query runs/old-text --data captions/ --split test
bt2 verify runs/new --old runs/old --data my_photos/ --split test --independent runs/independent
bt2 verify runs/new --old my-org/old-model --data fashion_mnist --split test --no_write   # measure, write nothing
"""


def build_parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.split("\n\n")
    # the summary, then the retrieval-set paragraphs (the input schema), up to the examples
    description = "\n\n".join([paragraphs[0]] + [p for p in paragraphs[2:] if not p.startswith("Examples")][:3])
    parser = argparse.ArgumentParser(prog="bt2 verify", description=description)
    parser.add_argument(
        "new", help="the new (query) model: a checkpoint directory (or a Hub id, then nothing is written)"
    )
    parser.add_argument("--old", required=True, help="the old model whose galleries the new model should search")
    parser.add_argument(
        "--data",
        required=True,
        help="held-out data: 'fashion_mnist', a directory (IDX, imagefolder, save_to_disk) or a Hub id; or a "
        "retrieval set folder (queries.jsonl, corpus.jsonl, qrels.jsonl, or a DatasetDict with those splits)",
    )
    parser.add_argument("--split", default="test", help="the held-out split's name (never the training split)")
    parser.add_argument("--independent", help="an independently trained new model (adds update gain and tax)")
    parser.add_argument("--data_dir", help="directory of the Fashion-MNIST IDX files for --data fashion_mnist")
    parser.add_argument("--dataset_name", help="the data set's name to record (default: --data)")
    parser.add_argument("--max_per_class", type=int, help="evaluate on at most this many items of each class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max_per_class subsample")
    parser.add_argument("--old_name", help="the old model's name to record, e.g. its Hub id (default: --old)")
    parser.add_argument("--old_revision", help="the old model's Hub revision to record")
    parser.add_argument("--method", help="how the new model was trained (default: its config.training.method)")
    parser.add_argument(
        "--criterion_metrics",
        help="metrics the criterion must hold on (default: top1,mAP; on a retrieval set recall@10,mrr@10,ndcg@10)",
    )
    parser.add_argument("--old_query", help="retrieval sets: the old system's query encoder, when not --old")
    parser.add_argument("--new_document", help="retrieval sets: the new system's document encoder (for new→new)")
    parser.add_argument("--max_queries", type=int, help="retrieval sets: evaluate a seeded subset of queries")
    parser.add_argument("--cutoff", type=int, default=10, help="retrieval sets: K of Recall@K, MRR@K, nDCG@K")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no_write", action="store_true", help="measure and print only; leave config.json as it is")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing measurement on more items or another split (recorded in the entry)",
    )
    parser.add_argument("--output", help="also write the verification (entry + PairReport) to this JSON file")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf.compatibility import CompatibilityMetadataError, IncompatibleModelsError
    from bt2_hf.data.retrieval_sets import is_retrieval_set
    from bt2_hf.errors import BT2InputError
    from bt2_hf.verify import summary_lines, verify_compatibility, verify_retrieval_set

    criterion = args.criterion_metrics and [m.strip() for m in args.criterion_metrics.split(",") if m.strip()]
    common = dict(split=args.split, dataset_name=args.dataset_name, seed=args.seed, old_name=args.old_name,
                  old_revision=args.old_revision, method=args.method, batch_size=args.batch_size, device=args.device,
                  write=not args.no_write, replace=args.replace)  # fmt: skip
    retrieval = is_retrieval_set(args.data)
    class_only = {
        "--independent": args.independent,
        "--max_per_class": args.max_per_class,
        "--data_dir": args.data_dir,
    }
    retrieval_only = {"--old_query": args.old_query, "--new_document": args.new_document,
                      "--max_queries": args.max_queries}  # fmt: skip
    misplaced = [flag for flag, value in (class_only if retrieval else retrieval_only).items() if value is not None]
    if misplaced:
        kind = "a retrieval set" if retrieval else "labelled classes (not a retrieval set)"
        print(f"bt2 verify: {', '.join(misplaced)} do(es) not apply: --data {args.data} is {kind}.", file=sys.stderr)
        return 2
    try:
        if retrieval:
            cutoff = args.cutoff
            result = verify_retrieval_set(
                args.new, args.old, args.data, old_query=args.old_query, new_document=args.new_document,
                max_queries=args.max_queries, cutoff=cutoff,
                criterion_metrics=criterion or [f"recall@{cutoff}", f"mrr@{cutoff}", f"ndcg@{cutoff}"], **common,
            )  # fmt: skip
        else:
            result = verify_compatibility(
                args.new, args.old, args.data, args.independent, data_dir=args.data_dir,
                max_per_class=args.max_per_class, criterion_metrics=criterion or ["top1", "mAP"], **common,
            )  # fmt: skip
    except (
        BT2InputError,
        ValueError,
        FileNotFoundError,
        OSError,
        TypeError,
        IncompatibleModelsError,
        CompatibilityMetadataError,
    ) as error:
        print(f"bt2 verify: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    if result.written_to is not None:
        replaced = result.entry.get("replaced")
        note = (
            f" (replacing the measurement on {replaced['dataset'].get('size')} items, --replace)" if replaced else ""
        )
        print(f"recorded in {result.written_to}{note}")
    elif args.no_write:
        print("not recorded (--no_write): config.json is unchanged")
    if args.output:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(args.output, result.to_dict())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
