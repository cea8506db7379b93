"""The ``bt2`` command: a thin dispatcher to one module per sub-command.

Each sub-command module (``bt2_hf.cli.<name>``) exposes ``main(argv: list[str] | None) -> int`` and parses its own
arguments, so ``python -m bt2_hf.cli.<name>`` works too and every command can be tested without a subprocess.
Modules are imported lazily so that ``bt2 --help`` stays fast and an optional extra missing for one command does not
break the others.

Logging is set here once for every sub-command: the HTTP clients' per-request lines (httpx, httpcore,
huggingface_hub, urllib3) are hidden unless ``bt2 --verbose <command>``, ``BT2_LOG_LEVEL=DEBUG`` or a command's own
``--verbose`` (``bt2 push``) asks for them.
"""

from __future__ import annotations

import importlib
import sys

# (module, one-line help, arguments put before the user's). The first block is the story in the order a user meets
# it; ``bt2 --help`` prints it as such.
STORY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "demo": ("bt2_hf.cli.demo", "run the whole story on Fashion-MNIST: old, independent, BCT and BT² models, verdict", ()),
    "train": ("bt2_hf.cli.train", "train an old / independent / BCT / BT² model from a recipe", ()),
    "verify": ("bt2_hf.cli.verify", "measure whether a new model may search an old model's galleries; record it", ()),
    "embed": ("bt2_hf.cli.embed", "embed a dataset with a model into resumable shards with ids and a manifest", ()),
    "index": ("bt2_hf.cli.index", "build a gallery (faiss or Milvus) from embeddings or a model and a dataset", ()),
    "search": ("bt2_hf.cli.index", "search a gallery with a (newer, compatible) query model: `bt2 index search`", ("search",)),
    "backfill": ("bt2_hf.cli.backfill", "re-embed a fraction of a gallery with a newer model, in place", ()),
    "push": ("bt2_hf.cli.push", "push a checkpoint with its card to the Hub", ()),
}  # fmt: skip
MORE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "plan": ("bt2_hf.cli.plan", "an upgrade's cost before it starts: re-embedding avoided, backfill days, memory, latency", ()),
    "gallery": ("bt2_hf.cli.gallery", "check, upgrade or inspect a gallery; admit a model at its gate (probe set)", ()),
    "wrap": ("bt2_hf.cli.wrap", "turn a sentence-transformers encoder (folder or Hub id) into a bt2_hf checkpoint", ()),
    "adapt": ("bt2_hf.cli.adapt", "fit a post-hoc adapter from a new model into an old one's space; save it as a model", ()),
    "card": ("bt2_hf.cli.card", "render or refresh a model card from a checkpoint (keeps the pipeline's sections)", ()),
    "eval": ("bt2_hf.cli.eval", "evaluate compatibility between models (old/old, new/old, new/new, matrix)", ()),
    "eval-text": ("bt2_hf.cli.eval_text", "evaluate text queries against an image gallery (old or new model)", ()),
    "series": ("bt2_hf.cli.series", "train and evaluate a series of BT² updates v1 → v2 → v3", ()),
    "image-text": ("bt2_hf.cli.image_text", "image–text compatibility on the scenes: BT² pair vs baselines", ()),
    "text-tower": ("bt2_hf.cli.text_tower", "class-level BT² text tower searching an old Fashion-MNIST gallery", ()),
    "text-upgrade": ("bt2_hf.cli.text_upgrade", "MiniLM → MPNet on real text: re-embed vs adapters vs BT²/BCT heads", ()),
    "serve": ("bt2_hf.cli.serve", "serve galleries over HTTP: search, dual-write, backfill beside it, cutover", ()),
    "hub-serve": ("bt2_hf.cli.hub_serve", "serve a local Hub on 127.0.0.1 to try push and pull offline", ()),
    "ui": ("bt2_hf.cli.ui", "a web page: old, new and backfilled search side by side, verdicts, progress", ()),
}  # fmt: skip
COMMANDS = {**STORY, **MORE}


def _usage() -> str:
    lines = ["usage: bt2 [--verbose] <command> [options]", "", "The story, in order:"]
    lines += [f"  {name:<11} {help_text}" for name, (_, help_text, _) in STORY.items()]
    lines += ["", "More commands:"]
    lines += [f"  {name:<11} {help_text}" for name, (_, help_text, _) in MORE.items()]
    lines += [
        "",
        "Example, from a fresh machine:",
        "  bt2 demo --output_dir bt2_demo_output",
        "",
        "Run `bt2 <command> --help` for the options of one command, with examples.",
        "Add `bt2 --verbose <command>` (or set BT2_LOG_LEVEL=DEBUG) to log at debug level, every HTTP request included.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in {"-v", "--verbose"}
    if verbose:
        argv = argv[1:]
    from ._output import set_verbose

    # Before the command's module is imported: the HTTP clients log from their first request, whichever command
    # makes it, and a command that never configures logging itself is quiet too.
    set_verbose(verbose)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bt2: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, leading_arguments = COMMANDS[name]
    module = importlib.import_module(module_name)
    return int(module.main([*leading_arguments, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
