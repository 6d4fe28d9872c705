"""The `resgen` command: one subcommand per user task, errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from resgen.codegen.arch import DEFAULT_ARCH
from resgen.errors import ResgenError, SpecError
from resgen.runtime.cache import atomic_write

SPEC_HELP = ("a catalog name (llama), path/to/file.py:name, package.module:name, or a textual-IR file "
             "path/to/block.rgir as `resgen ir` prints it")


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

    block = _resolve(args)
    if args.print_after_all:
        print(f"// ----- input -----\n{print_block(block)}")
        pipeline(block, args.hidden,
                 after_each=lambda p, b: print(f"// ----- after {p.name} -----\n{print_block(b)}"))
        return 0
    print(print_block(pipeline(block, args.hidden) if args.lower or args.hidden else block), end="")
    return 0


def _resolve(args: argparse.Namespace):
    """The block SPEC names, or its backward block (rg.grad) with --grad."""
    from resgen.spec import resolve

    block = resolve(args.spec, args.dtype)
    if getattr(args, "grad", False):
        from resgen.passes.autodiff import grad

        block = grad(block)
    return block


def _plan_and_source(args: argparse.Namespace):
    from resgen.codegen import plan_and_source

    rows = getattr(args, "rows", None)  # inspect: the heuristic plans for the rows the cost model assumes
    return plan_and_source(_resolve(args), args.hidden, args.config, args.arch or DEFAULT_ARCH, rows)


def _cmd_emit(args: argparse.Namespace) -> int:
    _, source = _plan_and_source(args)
    if args.output:
        Path(args.output).write_text(source)
    else:
        sys.stdout.write(source)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from resgen.codegen.cost import cost, loads_in_flight
    from resgen.runtime.compile import compile_for_device
    from resgen.runtime.nvrtc import parse_resources

    plan, source = _plan_and_source(args)
    binary = compile_for_device(source, plan.name, plan.arch)
    wide = parse_resources(binary.log, plan.entries[0].name)
    report = cost(plan, wide, args.rows)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return 0
    for line in plan.summary():
        print(line)
    bits = binary.access_bits
    print(f"global I/O  widest load {bits['load']} bits, widest store {bits['store']} bits (from the PTX)")
    from resgen.codegen.arch import get_arch

    resident = report.ctas_per_sm * plan.threads
    print(f"occupancy   {resident / get_arch(plan.arch).max_threads_per_sm:.0%} ({resident} threads/SM, "
          f"{report.ctas_per_sm} CTA(s)); row loads in flight up to {loads_in_flight(plan)} B/thread, "
          f"{report.bytes_in_flight_per_sm / 1024:.0f} KiB/SM")
    print(f"cost model  at {args.rows} rows: {report.hbm_bytes / report.ideal_bytes:.2f}x the ideal "
          f"{report.ideal_bytes / 1e6:.1f} MB from DRAM, {report.waves} wave(s), predicted "
          f"{100 * report.predicted_fraction:.0f}% of copy bandwidth")
    print(f"{'entry point':<52} {'regs':>5} {'spill st':>9} {'spill ld':>9} {'stack':>6} {'smem':>6}")
    for entry in plan.entries:
        r = parse_resources(binary.log, entry.name)
        print(f"{entry.name:<52} {r.registers:>5} {r.spill_stores:>9} {r.spill_loads:>9} {r.stack_frame:>6} "
              f"{r.shared_static + plan.smem_bytes:>6}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from resgen.runtime.toolkit import environment_report

    for key, value in environment_report():
        print(f"{key:<18} {value}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from resgen.generate import default_out, stale_files, write_generated

    out = Path(args.out) if args.out else default_out()
    if args.check:
        stale = stale_files(out)
        for name in stale:
            print(f"stale: {out / name}")
        if stale:
            print("run `resgen generate` to update", file=sys.stderr)
            return 1
        print(f"{out} is up to date ({len(list(out.glob('*.cu')))} files)")
        return 0
    for name in write_generated(out):
        print(out / name)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from resgen.spec import resolve
    from resgen.verification import verify

    # --grad: the backward kernel's gradients against torch autograd through the forward's reference
    report = verify(resolve(args.spec, args.dtype), args.hidden, args.rows, backend=args.backend, seed=args.seed,
                    config=args.config, arch=args.arch, sanitize=args.sanitize, grad=args.grad)
    print(report.table())
    return 0 if report.ok else 1


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_tune(args: argparse.Namespace) -> int:
    from resgen.runtime.kernel import cuda_usable, device_arch
    from resgen.tune import db

    if args.show:
        entries = db.read(args.db)
        if not entries:
            print(f"no tuned configs in {args.db or db.db_path()}")
        for key, r in sorted(entries.items()):
            measured = (f"{r['time_us']:.1f} us  {r['gbps']:.0f} GB/s  {100 * r['frac_copy']:.1f}% of copy  "
                        f"({r.get('date', 'no date')})" if all(k in r for k in db.ENTRY_KEYS[1:4]) else "(no timing)")
            print(f"{key}\n    {r['config']}  {measured}")
        return 0
    if args.spec is None or args.hidden is None:
        raise SpecError("tune needs SPEC and --hidden (or --show)")
    from resgen.spec import resolve
    from resgen.tune.search import measure, prune, results_table

    block = resolve(args.spec, args.dtype)
    gpu_missing = cuda_usable()
    arch = args.arch or (device_arch() if gpu_missing is None else DEFAULT_ARCH)
    print(f"pruning launch configs for {block.name} hidden={args.hidden} on {arch} (NVRTC, no GPU time)")
    survivors, dropped = prune(block, args.hidden, arch, progress=print if args.verbose else None,
                               budget_s=args.budget, rows=args.rows)
    print(f"{len(survivors)} candidates survive; dropped: " + ", ".join(f"{v} by {k}" for k, v in dropped.items() if v))
    if gpu_missing is not None:
        print(f"measurement needs a GPU: {gpu_missing}. Candidates (best predicted first, at {args.rows} rows):")
        for c in survivors[:10]:
            print(f"  {c.config}  predicted {c.predicted:.0%} of copy, {c.registers} registers, "
                  f"occupancy {c.occupancy:.0%}")
        return 0
    import datetime

    import torch

    results = measure(block, args.hidden, args.rows, survivors, budget_s=args.budget)
    if not results:
        print("no candidate passed verification")
        return 1
    print(results_table(results))
    best = results[0]
    key = db.entry_key(block, args.hidden, torch.cuda.get_device_name(), arch, args.rows)
    db.store(key, {**best, "block": block.name, "hidden": args.hidden, "rows": args.rows, "arch": arch,
                   "gpu": torch.cuda.get_device_name(),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, args.db)
    print(f"stored {best['config']} for {key}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from resgen.tune import bench

    if args.from_json:
        records = bench.load(Path(args.from_json))
    else:
        from resgen.runtime.kernel import cuda_usable
        from resgen.spec import resolve

        reason = cuda_usable()
        if reason is not None and not args.dry_run:
            raise SpecError(f"bench measures on a GPU: {reason}; --from-json FILE renders stored results, "
                            f"--dry-run goes through every step but the timing")
        cases = [bench.Case(s, resolve(s, args.dtype), args.dtype or "bf16") for s in args.spec.split(",")]

        def checkpoint(records: list[dict], block_done: bool) -> None:
            if args.json:
                atomic_write(Path(args.json), json.dumps(records, indent=1).encode())
            if block_done and args.plot and records:
                bench.plot(records, Path(args.plot))

        records = bench.run_bench(cases, args.hidden, args.rows, args.against.split(","), max_gb=args.max_gb,
                                  checkpoint=checkpoint, dry_run=args.dry_run,
                                  modes=bench.MODES[1:] if args.grad else ("forward",))
    print(bench.table(records))
    if args.plot and records:
        bench.plot(records, Path(args.plot))
        print(f"plot written to {args.plot}")
    return 0


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    _add_spec(p)
    p.add_argument("--hidden", type=int, required=True, help="hidden size to specialize for")
    p.add_argument("--arch", default=None, help="GPU architecture (sm_80, sm_89, sm_90, sm_100, ...; default: "
                   "the GPU's own, or sm_90)")
    p.add_argument("--config", default=None, help="launch config overrides, e.g. tpr=256,rows=1,vec=8,cache=registers,"
                   "cluster=1 (keys tpr, rows, vec, cache, cluster; fields you leave out are chosen to fit yours)")


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--dtype", default=None, help="storage dtype for catalog blocks and factories (default bf16)")
    p.add_argument("--grad", action="store_true", help="the block's backward (rg.grad: reverse-mode autodiff "
                   "over the IR) instead of the block")


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

    p = sub.add_parser("emit", help="print the CUDA source of a kernel",
                       description="Print exactly the CUDA source resgen compiles for SPEC at --hidden.")
    _add_kernel_args(p)
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_emit)

    p = sub.add_parser("inspect", help="compile a kernel and show its resources",
                       description="Compile with NVRTC (no GPU needed); print the plan, registers, spills, "
                                   "shared memory, the width of global loads/stores, and the cost model's "
                                   "prediction (DRAM bytes against the ideal, loads in flight, waves, fraction "
                                   "of copy bandwidth).")
    _add_kernel_args(p)
    p.add_argument("--rows", type=int, default=32768, help="rows the heuristic plans for and the cost model assumes (default 32768)")
    p.add_argument("--json", action="store_true", help="print the cost model's report as one JSON object")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("verify", help="run a kernel against the PyTorch reference",
                       description="Compile SPEC, run it and the reference on fresh random inputs (outputs "
                                   "poisoned with NaN), print per-output errors; exit 1 on failure.")
    _add_kernel_args(p)
    p.add_argument("--rows", type=int, default=64, help="rows of random input (default 64)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "emu"], help="where to run (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and of dropout")
    p.add_argument("--sanitize", action="store_true", help="emu only: report out-of-bounds and misaligned "
                   "accesses, shared-memory races, bad shuffle masks, partial barriers and exited-CTA reads at "
                   "their source lines, and run three schedules that must agree bitwise")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("tune", help="search launch configs and store the fastest",
                       description="Enumerate launch configs, drop those the plan rejects or whose NVRTC "
                                   "report shows spills or low occupancy, verify and time the rest on the GPU, "
                                   "store the best in the tuning database (rg.compile uses it).")
    p.add_argument("spec", metavar="SPEC", nargs="?", help=SPEC_HELP)
    p.add_argument("--dtype", default=None, help="storage dtype for catalog blocks and factories (default bf16)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size")
    p.add_argument("--rows", type=int, default=32768, help="rows to time with (default 32768)")
    p.add_argument("--arch", default=None, help="GPU architecture (default: the GPU's own, or sm_90)")
    p.add_argument("--budget", type=float, default=None, help="seconds to spend on each stage at most")
    p.add_argument("--db", type=Path, default=None, help="tuning database file (default $RESGEN_TUNING_DB or "
                   "<cache>/tuning.json)")
    p.add_argument("--show", action="store_true", help="list the stored results and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print every surviving candidate while pruning")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("bench", help="benchmark against PyTorch, torch.compile and Liger",
                       description="Time resgen and its peers over a sweep of shapes; print a table, write "
                                   "a JSON of records and a PNG plot (GB/s vs hidden, copy ceiling drawn).")
    p.add_argument("spec", metavar="SPEC[,SPEC]", nargs="?", default="llama,gpt2", help="blocks to benchmark")
    p.add_argument("--dtype", default=None, help="storage dtype (default bf16)")
    p.add_argument("--hidden", type=_ints, default=[1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144],
                   help="comma-separated hidden sizes")
    p.add_argument("--rows", type=_ints, default=[1, 64, 4096, 32768], help="comma-separated row counts")
    p.add_argument("--against", default="torch,compile,liger", help="peers: torch, compile, liger")
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--from-json", default=None, help="render the table/plot of stored records (no GPU needed)")
    p.add_argument("--max-gb", type=float, default=48.0, help="skip shapes moving more than this many GB per call")
    p.add_argument("--dry-run", action="store_true", help="no GPU: generate and build every kernel (emu), count bytes, "
                   "write records, table and plot, but time nothing (records say dry_run)")
    p.add_argument("--grad", action="store_true", help="time training instead: the backward alone and the forward "
                   "plus backward, every system through torch autograd (bytes: each tensor the backward reads "
                   "once, each gradient written once)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("env", help="show the toolchain resgen found",
                       description="Print versions, the GPU and driver, NVRTC's library and version, the CUDA "
                                   "header folders and the host compiler: what resgen compiles and runs with.")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("generate", help="rewrite generated/ (the catalog's emitted CUDA)",
                       description="Write the emitted CUDA of every catalog block to generated/.")
    p.add_argument("--out", default=None, help="folder to write (default: generated/ of the resgen checkout)")
    p.add_argument("--check", action="store_true", help="only report stale files; exit 1 when any")
    p.set_defaults(func=_cmd_generate)

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
    except OSError as exc:  # a file the user named cannot be read or written
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"resgen {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
