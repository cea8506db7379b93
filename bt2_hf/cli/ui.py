"""``bt2 ui``: a web page (Gradio) showing an upgrade: the old model, the new model on the old gallery, and the new
model on a backfilled copy of it, side by side, with each model's verdict and the backfill's progress.

The user's gallery is never modified: the page searches it as it is, and backfills a copy of it in a work folder
(made on the first run, continued or reused afterwards; settings saved there as ``ui.json``). Serves on 127.0.0.1
without a share link; Gradio's analytics are off.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 ui --demo_output bt2_demo_output                         # after `bt2 demo`: copies go to bt2_demo_output/ui
bt2 ui --demo_output bt2_demo_output --required_metrics mAP  # judge as an owner who ranks by mAP
bt2 ui --demo_output bt2_demo_output --required_metrics mAP --gate  # ... on the gallery's own probe measurement
bt2 ui --old_model old/ --new_model new/ --gallery gallery_old/ --data $FMNIST --split test --work_dir ui_work
bt2 ui --config ui_work/ui.json --port 7861                  # reopen a prepared page
bt2 ui --demo_output bt2_demo_output --backfill_fraction 0.3 --prepare_only   # make the copies, serve nothing
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 ui", description=__doc__.split("\n\n")[0])
    where = parser.add_argument_group("what to show (one of: --config, --demo_output, or the explicit paths)")
    where.add_argument("--config", help="a ui.json written by an earlier `bt2 ui` (or its folder)")
    where.add_argument("--demo_output", help="a `bt2 demo` output folder: its old CNN, BT² model and old gallery")
    where.add_argument("--old_model", help="the old model (the gallery's encoder)")
    where.add_argument("--new_model", help="the new model (with --demo_output: a name under models/, default bt2)")
    where.add_argument("--gallery", help="the old gallery (a faiss gallery directory; never modified)")
    where.add_argument("--data", help="the gallery's dataset, as given to `bt2 embed` (backfill and thumbnails)")
    where.add_argument("--split", help="its split")
    where.add_argument("--work_dir", help="where the backfilled copy and ui.json go (default with --demo_output: "
                                          "DEMO_OUTPUT/ui)")  # fmt: skip
    prepare = parser.add_argument_group("the backfilled copy")
    prepare.add_argument("--backfill_fraction", type=float, default=0.5, help="fraction of the copy to re-embed "
                         "(default 0.5; continued from an earlier run, and from the page)")  # fmt: skip
    prepare.add_argument("--required_metrics", nargs="+", help="judge with this admission policy on the page's "
                         "copies (e.g. mAP) instead of the gallery owner's")  # fmt: skip
    prepare.add_argument("--allow_unmeasured", action="store_true", help="admit declared, unmeasured compatibility")
    prepare.add_argument("--gate", action="store_true", help="measure the new model on the gallery's probe set (as "
                         "`bt2 gallery admit`) in the page's copies; that measurement decides")  # fmt: skip
    prepare.add_argument("--prepare_only", action="store_true", help="make the copies and ui.json; serve nothing")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    serve.add_argument("--device", help="where the models run (default: CPU)")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def _settings(args, parser):
    from bt2_hf.ui import UpgradeSettings, prepare_demo, prepare_upgrade

    common = {"fraction": args.backfill_fraction, "required_metrics": args.required_metrics,
              "allow_unmeasured": args.allow_unmeasured, "gate": args.gate}  # fmt: skip
    if args.config:
        return UpgradeSettings.load(args.config)
    if args.demo_output:
        return prepare_demo(args.demo_output, work_dir=args.work_dir, data=args.data,
                            new_model=args.new_model or "bt2", **common)  # fmt: skip
    missing = [f"--{name}" for name in ("old_model", "new_model", "gallery", "work_dir") if not getattr(args, name)]
    if missing:
        parser.error(f"give --config, --demo_output, or {' '.join(missing)}")
    return prepare_upgrade(args.old_model, args.new_model, args.gallery, args.work_dir, data=args.data,
                           split=args.split, **common)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf.errors import BT2InputError
    from bt2_hf.galleries import GalleryError

    try:
        settings = _settings(args, parser)
        if args.prepare_only:
            print(json.dumps(settings.to_dict()))
            return 0
        from bt2_hf.ui import UpgradeView, build_page, launch_page

        view = UpgradeView(settings, device=args.device)
        page = build_page(view)
    except (BT2InputError, GalleryError, FileNotFoundError, ValueError) as error:
        print(f"bt2 ui: {error}", file=sys.stderr)
        return 2
    print(f"bt2 ui: serving {view.title!r} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    launch_page(page, args.host, args.port, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
