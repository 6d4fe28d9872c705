"""The `resgen` command: one subcommand per user task, errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from resgen.errors import ResgenError


def _cmd_catalog(args: argparse.Namespace) -> int:
    from resgen.catalog import catalog

    width = max(map(len, catalog))
    for name, entry in catalog.items():
        print(f"{name:<{width}}  {entry.summary}")
        if args.verbose:
            for line in entry.doc.splitlines()[1:]:
                print(f"{'':<{width}}  {line.strip()}")
    return 0


def _cmd_ir(args: argparse.Namespace) -> int:
    from resgen.ir.printer import print_block
    from resgen.passes import pipeline
    from resgen.spec import resolve

    block = resolve(args.spec, args.dtype)
    if args.print_after_all:
        print(f"// ----- input -----\n{print_block(block)}")
        pipeline(block, args.hidden,
                 after_each=lambda p, b: print(f"// ----- after {p.name} -----\n{print_block(b)}"))
        return 0
    print(print_block(pipeline(block, args.hidden) if args.lower or args.hidden else block), end="")
    return 0


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="catalog name, path/to/file.py:name or package.module:name")
    p.add_argument("--dtype", default=None, help="storage dtype for catalog blocks and factories (default bf16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resgen", description="Fused residual + normalization kernel generator.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("catalog", help="list the built-in blocks", description="List the built-in blocks.")
    p.add_argument("-v", "--verbose", action="store_true", help="print each block's full description")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("ir", help="print a block's IR", description="Print a block's IR, optionally lowered.")
    _add_spec(p)
    p.add_argument("--hidden", type=int, default=None, help="specialize for this hidden size")
    p.add_argument("--lower", action="store_true", help="run the pass pipeline before printing")
    p.add_argument("--print-after-all", action="store_true", help="print the block after every pass")
    p.set_defaults(func=_cmd_ir)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ResgenError as exc:
        print(f"resgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
