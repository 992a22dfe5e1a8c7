"""``python -m f2d``: command-line front door of the library."""
from __future__ import annotations

import argparse
import sys

from .weights import WeightsError, convert


def _cmd_convert(args: argparse.Namespace) -> int:
    kind = convert(args.input, args.output)
    print(f"{args.output}: wrote the {kind} weights as .safetensors")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m f2d", description="Face2Diffusion tools.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "convert",
        help="convert an official msid.pt / mapping.pt to .safetensors",
        description="Read a .pt checkpoint without running code (weights only), check that it is "
        "an F2D MSID encoder or mapping network, and write it as .safetensors.",
    )
    c.add_argument("input", help="msid.pt or mapping.pt")
    c.add_argument("output", help="destination .safetensors file")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
