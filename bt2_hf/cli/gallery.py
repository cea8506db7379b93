"""``bt2 gallery upgrade|check|compact|admit|policy|info|alias|cutover|rollback``: look after a gallery directory.

Examples::

    bt2 gallery upgrade bt2_demo_output/gallery_old      # once, for a gallery in the former index format
    bt2 gallery check gallery/                           # hash every data file; exit 1 naming any damaged one
    bt2 gallery compact gallery/                         # fold items added since the build into its files
    bt2 gallery admit gallery/ new_model/                # measure a model on the gallery's own probe set, log it
    bt2 gallery policy gallery/ --min_margin 0.5 --min_size 300 --require_gate
    bt2 gallery info gallery/                            # encoder, size, policy, probe, admission log
    bt2 gallery alias galleries/ products products_v1    # a served name (galleries/ holds gallery directories)
    bt2 gallery cutover galleries/ products              # → the backfilled new model's gallery (finalised beside it)
    bt2 gallery rollback galleries/ products             # → back to the gallery it served before
    bt2 gallery cutover galleries.db products            # Milvus: the same with its collection aliases

``admit`` embeds the gallery's probe items with the candidate, measures old→old and new→old with the library's
evaluator, judges them with the gallery's policy and appends the result to the gallery's admission log. Searches
with that model are then admitted (or refused) on the log entry, whatever its config claims. Exit status: 0
admitted, 1 refused, 2 an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._flags import snake_case_flags
from ._output import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 gallery", description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("upgrade", help="convert a gallery of the former index format, in place, once",
                                  description="Example: bt2 gallery upgrade bt2_demo_output/gallery_old")  # fmt: skip
    upgrade.add_argument("directory")
    check = commands.add_parser("check", help="hash every data file against the manifest (exit 1 on damage)",
                                description="Example: bt2 gallery check gallery/")  # fmt: skip
    check.add_argument("directory")
    compact = commands.add_parser(
        "compact", help="fold the items added since the build (dual-writes) into the gallery's files (atomic)",
        description="Example: bt2 gallery compact gallery/",
    )  # fmt: skip
    compact.add_argument("directory")
    admit = commands.add_parser(
        "admit", help="measure a query model on the gallery's probe set and log the result",
        description="Example: bt2 gallery admit gallery/ new_model/ --device cpu",
    )  # fmt: skip
    admit.add_argument("directory")
    admit.add_argument("model", help="the candidate's checkpoint directory (or Hub id)")
    admit.add_argument("--batch-size", type=int, default=256)
    admit.add_argument("--device")
    policy = commands.add_parser(
        "policy", help="show or set the owner's admission policy",
        description="Example: bt2 gallery policy gallery/ --required_metrics top1,mAP --min_margin 0.5",
    )  # fmt: skip
    policy.add_argument("directory")
    policy.add_argument("--required-metrics", help="comma-separated, e.g. top1,mAP")
    policy.add_argument("--min-margin", type=float)
    policy.add_argument("--min-size", type=int)
    policy.add_argument("--require-gate", choices=["true", "false"])
    alias = commands.add_parser("alias", help="name a gallery of a folder of galleries (what `bt2 serve` serves)",
                                description="Example: bt2 gallery alias galleries/ products products_v1")  # fmt: skip
    alias.add_argument("root", help="the folder holding the gallery directories, or a Milvus URI (.db, http://…)")
    alias.add_argument("alias")
    alias.add_argument("target", help="a gallery directory's name inside the folder (or a Milvus collection)")
    cutover = commands.add_parser(
        "cutover", help="switch an alias to its backfilled gallery, finalised beside it (atomic; recorded)",
        description="Example: bt2 gallery cutover galleries/ products",
    )  # fmt: skip
    cutover.add_argument("root")
    cutover.add_argument("alias")
    cutover.add_argument("--to", help="switch to this gallery directory instead of finalising the backfill")
    cutover.add_argument("--index-type", help="index of the finalised gallery (default: the served one's)")
    rollback = commands.add_parser("rollback", help="switch an alias back to the gallery it served before",
                                   description="Example: bt2 gallery rollback galleries/ products")  # fmt: skip
    rollback.add_argument("root")
    rollback.add_argument("alias")
    info = commands.add_parser("info", help="print the manifest's summary", description="Example: bt2 gallery info g/")
    info.add_argument("directory")
    return snake_case_flags(parser)


def run(args) -> int:
    from bt2_hf.galleries import FaissGallery

    if args.command == "upgrade":
        from bt2_hf.galleries.faiss_store import upgrade_legacy_gallery

        gallery = upgrade_legacy_gallery(args.directory)
        print(json.dumps({"upgraded": args.directory, "count": len(gallery), "dimension": gallery.dimension,
                          "encoder": gallery.encoder["fingerprint"]}))  # fmt: skip
        return 0
    if args.command == "check":
        gallery = FaissGallery.open(args.directory, verify=False)  # sizes only: check() names every damaged file
        problems = gallery.check()
        for problem in problems:
            print(f"bt2 gallery check: {problem}", file=sys.stderr)
        print(json.dumps({"directory": args.directory, "files": len(gallery.manifest["files"]),
                          "intact": not problems}))  # fmt: skip
        if problems:
            print("Rebuild the gallery (`bt2 index build --overwrite`) or restore the files from a copy.",
                  file=sys.stderr)  # fmt: skip
        return 1 if problems else 0
    if args.command == "compact":
        from bt2_hf.galleries.append import compact_gallery

        gallery = FaissGallery.open(args.directory)
        appended = len(gallery.appended) if gallery.appended is not None else 0
        gallery = compact_gallery(gallery)
        print(json.dumps({"directory": args.directory, "count": len(gallery), "folded": appended}))
        return 0
    if args.command in ("alias", "cutover", "rollback"):
        from bt2_hf.galleries.aliases import open_gallery_root

        # a folder of faiss galleries (aliases.json), or a Milvus URI (the server's collection aliases)
        root = open_gallery_root(args.root)
        if args.command == "alias":
            entry = root.create_alias(args.alias, args.target)
        elif args.command == "cutover":
            entry = root.cutover(args.alias, to=args.to, index_type=args.index_type)
        else:
            entry = root.rollback(args.alias)
        print(json.dumps(entry))
        return 0
    gallery = FaissGallery.open(args.directory)
    if args.command == "admit":
        from bt2_hf import BT2Model
        from bt2_hf.galleries.gate import admit_candidate

        model = BT2Model.from_pretrained(args.model)
        entry = admit_candidate(gallery, model, batch_size=args.batch_size, device=args.device, model_name=args.model)
        print(json.dumps({key: entry[key] for key in ("passed", "reason", "margin", "size", "prefix_dim",
                                                       "query_fingerprint")}))  # fmt: skip
        if not entry["passed"]:
            print(f"bt2 gallery admit: {args.model} REFUSED: {entry['reason']}", file=sys.stderr)
        return 0 if entry["passed"] else 1
    if args.command == "policy":
        current = gallery.policy.to_dict()
        changes = {"required_metrics": args.required_metrics and [m.strip() for m in args.required_metrics.split(",")],
                   "min_margin": args.min_margin, "min_size": args.min_size,
                   "require_gate": None if args.require_gate is None else args.require_gate == "true"}  # fmt: skip
        changes = {key: value for key, value in changes.items() if value is not None}
        if changes:
            gallery.set_policy(dict(current, **changes))
        print(json.dumps(gallery.manifest["policy"]))
        return 0
    manifest = gallery.manifest
    print(json.dumps({"encoder": manifest["encoder"].get("name_or_path"), "fingerprint": gallery.encoder["fingerprint"],
                      "count": len(gallery), "appended": (manifest.get("appended") or {}).get("count", 0),
                      "dimension": gallery.dimension, "index": manifest["index"],
                      "items": manifest.get("items"), "probe": manifest.get("probe"), "policy": manifest.get("policy"),
                      "admissions": [{k: e.get(k) for k in ("query_name", "passed", "margin", "size", "date")}
                                     for e in gallery.admissions],
                      "backfill": manifest.get("backfill")}, indent=2))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf.compatibility import IncompatibleModelsError
    from bt2_hf.galleries import GalleryError

    try:
        return run(args)
    except (GalleryError, IncompatibleModelsError, ValueError, FileNotFoundError) as error:
        print(f"bt2 gallery: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
