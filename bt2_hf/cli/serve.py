"""``bt2 serve``: an HTTP search service over the galleries of a folder or a Milvus URI (FastAPI + uvicorn; ``serve``).

Examples::

    bt2 gallery alias galleries/ products products_v1        # name the served gallery (once)
    BT2_SERVE_TOKEN=secret bt2 serve galleries/ --model new=models/bt2 --model old=models/old
    bt2 serve galleries/ --model new=models/bt2 --model old=models/old --token secret \\
        --backfill_with new --backfill_data /usr/share/datasets/fashion-mnist --backfill_split train
    bt2 gallery alias http://milvus:19530 products products_v1   # Milvus: its collections and collection aliases
    bt2 serve http://milvus:19530 --model new=models/bt2 --model old=models/old

Endpoints (OpenAPI docs at /docs): POST /search (text, uploaded image or vector), GET /galleries, POST /items
(dual-write), POST /backfill, POST /cutover, POST /rollback, GET /healthz, GET /metrics. Writes need the token
(``Authorization: Bearer …``); reads are open unless --closed_reads. Listens on 127.0.0.1 unless --host says
otherwise. A backfill started here is recorded in the folder and resumes when the service starts again (on Milvus it
is not recorded: start it again with --backfill_with, it continues at its last committed batch). On Milvus, POST
/items is refused (insert new items with Milvus's client).
"""

from __future__ import annotations

import argparse
import os
import sys

from ._flags import snake_case_flags
from ._output import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 serve", description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("root", help="folder of gallery directories (and their aliases.json), or a Milvus URI (a "
                                     "milvus-lite .db file, http://host:port of a server) whose collections are served")  # fmt: skip
    parser.add_argument("--model", action="append", default=[],
                        help="query model to load, PATH or NAME=PATH (repeat; the first admitted one is the default)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", help="bearer token of write endpoints (default: $BT2_SERVE_TOKEN)")
    parser.add_argument("--closed-reads", action="store_true", help="searches and descriptions need the token too")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (413 above)")
    parser.add_argument("--rule", help="ranking rule during a backfill (default: the galleries' default)")
    parser.add_argument(
        "--backfill-with", help="start (or resume) a backfill with this loaded model, beside the service"
    )
    parser.add_argument("--backfill-gallery", help="the gallery or alias to backfill (default: the only one)")
    parser.add_argument("--backfill-data", help="the gallery's dataset (as given to `bt2 embed`)")
    parser.add_argument("--backfill-split")
    parser.add_argument("--backfill-batch-size", type=int, default=1024, help="items per committed batch")
    parser.add_argument("--backfill-order", choices=["random", "priority"])
    parser.add_argument("--backfill-pause", type=float, default=0.0,
                        help="seconds to wait between batches (leaves CPU to the searches)")  # fmt: skip
    parser.add_argument("--backfill-priority", choices=["low", "normal"], default="low",
                        help="low: the backfill yields to the searches (waits for quiet traffic before each step, "
                        "taking at most --backfill_share of the time under load) and embeds in slices; normal: flat "
                        "out")  # fmt: skip
    parser.add_argument("--backfill-share", type=float, default=None,
                        help="a low-priority backfill's share of the time under continuous search load (default 0.1)")  # fmt: skip
    parser.add_argument("--allow-unmeasured", action="store_true", help="backfill with declared, unmeasured compat.")
    parser.add_argument("--search-threads", type=int, default=1,
                        help="faiss's OpenMP threads per search (one query is too small to share; 0: its default)")  # fmt: skip
    parser.add_argument("--model-threads", type=int, default=None,
                        help="torch's threads for the query models (default: half the cores, at least one: the other "
                        "half answers the searches, HTTP and a backfill; 0: torch's default, every core)")  # fmt: skip
    parser.add_argument("--busy-poll-ms", type=float, default=None,
                        help="milliseconds the event loop keeps polling after each answer instead of sleeping: "
                        "lower latency for a client that waits for each answer, at the cost of that much CPU per "
                        "answer (default: 0.25; 0 turns it off)")  # fmt: skip
    parser.add_argument("--text-batch-window-ms", type=float, default=2.0,
                        help="concurrent text queries wait up to this long to share a forward pass (negative: never "
                        "batch)")  # fmt: skip
    return snake_case_flags(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(asctime)s %(levelname)s %(message)s")
    token = args.token or os.environ.get("BT2_SERVE_TOKEN") or None
    if args.backfill_with and not args.backfill_data:
        print("bt2 serve: --backfill_with needs --backfill_data (the gallery's dataset).", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from bt2_hf.serving import GalleryService, create_app
    except ModuleNotFoundError as error:
        print(f"bt2 serve: {error.name} is missing: pip install 'bt2_hf[serve]'.", file=sys.stderr)
        return 2
    if args.model_threads is not None and args.model_threads < 0:
        print(f"bt2 serve: --model_threads must be 0 or more, got {args.model_threads}.", file=sys.stderr)
        return 2
    if args.busy_poll_ms is not None and not 0 <= args.busy_poll_ms <= 100:
        print(f"bt2 serve: the busy-poll window is in milliseconds, from 0 to 100, got {args.busy_poll_ms}.",
              file=sys.stderr)  # fmt: skip
        return 2
    threads = model_threads(args.model_threads)
    if threads:
        import torch

        # Measured on 2 cores at 1M items, 8 text clients beside a backfill: p99 192 ms with torch on both cores
        # against 104 ms on one (docs/serving.md): a forward pass on every core starves the searches beside it.
        torch.set_num_threads(threads)
    try:
        service = GalleryService(args.root, models=args.model, rule=args.rule,
                                 search_threads=args.search_threads or None,
                                 text_batch_window=None if args.text_batch_window_ms < 0
                                 else args.text_batch_window_ms / 1000)  # fmt: skip
        if args.backfill_with:
            gallery = args.backfill_gallery or service.default_gallery()
            _, served = service.served(gallery)
            if served.job is None:  # not already resumed from the folder's record
                service.start_backfill(gallery, _model_name(service, args.backfill_with), args.backfill_data,
                                       split=args.backfill_split, order=args.backfill_order,
                                       batch_size=args.backfill_batch_size, allow_unmeasured=args.allow_unmeasured,
                                       pause=args.backfill_pause, priority=args.backfill_priority,
                                       share=args.backfill_share)  # fmt: skip
        app = create_app(service, token=token, open_reads=not args.closed_reads,
                         max_body=int(args.max_body_mb * (1 << 20)),
                         **({} if args.busy_poll_ms is None else {"busy_poll": args.busy_poll_ms / 1000}))  # fmt: skip
    except ValueError as error:  # BT2InputError, GalleryError, ServingError, IncompatibleModelsError
        print(f"bt2 serve: {error}", file=sys.stderr)
        return 2
    # The service reads no client address (no access log): uvicorn's proxy-header layer would only cost each request
    # a little time.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            proxy_headers=False)  # fmt: skip
    server = uvicorn.Server(config)
    print(f"bt2 serve: {args.root} on http://{args.host}:{args.port} (API docs at /docs)", flush=True)
    try:
        server.run()
    finally:
        service.stop_jobs()
    return 0


def model_threads(requested: int | None, cores: int | None = None) -> int | None:
    """torch's threads for a served model's forward passes: ``requested``, or half the cores (at least one) when
    it is ``None``; ``None`` (torch's own default) when it is 0."""
    if requested is None:
        return max(1, (cores or os.cpu_count() or 2) // 2)
    return requested or None


def _model_name(service, spec: str) -> str:
    """A loaded model's name, or the name of the model loaded now from ``spec`` (``PATH`` or ``NAME=PATH``)."""
    return spec if spec in service.registry.models else service.registry.load(spec).name


if __name__ == "__main__":
    sys.exit(main())
