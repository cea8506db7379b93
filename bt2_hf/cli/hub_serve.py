"""``bt2 hub-serve``: a local, in-memory Hub on 127.0.0.1 for trying push and pull without a network."""

from __future__ import annotations

import argparse
import sys

from ._flags import snake_case_flags

RECIPE = """Example: try push and pull without the network

  bt2 hub-serve --port 8765                       # shell 1: serves until Ctrl-C
  export HF_ENDPOINT=http://127.0.0.1:8765        # shell 2: every Hugging Face client uses it
  export HF_TOKEN=hf_bt2_test_token HF_HUB_OFFLINE=0
  bt2 push bt2_demo_output/models/bt2 --repo_id bt2-tester/fashion-mnist-bt2
  python -c "import bt2_hf; from transformers import AutoModel; print(AutoModel.from_pretrained('bt2-tester/fashion-mnist-bt2'))"

The Hub keeps its repos in memory: they are gone when it stops. It accepts the token above (user bt2-tester)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 hub-serve",
        description=__doc__,
        epilog=RECIPE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8765, help="Port on 127.0.0.1 (0: any free port).")
    return snake_case_flags(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bt2_hf.hub.local_server import serve_until_interrupted

    try:
        serve_until_interrupted(port=args.port, ready=lambda line: print(line, flush=True))
    except OSError as error:  # the port is taken, most often
        print(
            f"bt2 hub-serve: cannot listen on 127.0.0.1:{args.port} ({error}); pick another --port.", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
