"""`python -m pipeline curate SRC` runs the chain; `python -m pipeline stage NAME --run RUN` one stage.

Exit codes: 0 all inputs processed, 2 usage error (such as a missing SRC), 3 finished but some
inputs failed (each has a row in the `errors` table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from manifests import store
from pipeline.config import load_config, write_run_config
from pipeline.registry import STAGES
from pipeline.runner import run_stage
from pipeline.summary import summarize

EXIT_FAILED_INPUTS = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    curate = sub.add_parser("curate", help="run the chain of stages on a folder of videos")
    curate.add_argument("src", type=Path, help="folder (or file) of raw videos")
    curate.add_argument("--out", type=Path, help="run folder (default: runs/<name of SRC>)")
    curate.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    curate.add_argument("--config", type=Path, help="YAML config file")
    stage = sub.add_parser("stage", help="run one stage of an existing run (on a cluster with RAY_ADDRESS)")
    stage.add_argument("name", choices=list(STAGES))
    stage.add_argument("--run", type=Path, required=True, help="run folder")
    for cmd in (curate, stage):
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
        cmd.add_argument("--workers", type=int, help="parallel CPU workers")
        cmd.add_argument("--retry-errors", action="store_true", help="retry inputs that failed before")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "curate":
        if not args.src.exists():
            print(f"error: SRC does not exist: {args.src}", file=sys.stderr)
            return 2
        run = args.out or Path("runs") / args.src.resolve().name
        config_file = args.config or (run / "config.yaml" if (run / "config.yaml").exists() else None)
        config = load_config(config_file, args.set)
        config.src = str(args.src.resolve())
        if args.stages:
            config.stages = [s.strip() for s in args.stages.split(",")]
        names = config.stages
    else:
        run = args.run
        if not (run / "config.yaml").exists():
            print(f"error: {run} is not a run folder (no config.yaml)", file=sys.stderr)
            return 2
        config = load_config(run / "config.yaml", args.set)
        names = [args.name]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {unknown}; stages are {list(STAGES)}", file=sys.stderr)
        return 2
    if args.workers:
        config.workers = args.workers
    started = time.perf_counter()
    store.remove_temporaries(run) if run.exists() else None
    write_run_config(run, config)
    reports = [run_stage(name, config, run, args.retry_errors) for name in names]
    text, failed = summarize(run, reports, time.perf_counter() - started)
    print(text)
    if failed:
        print(f"{failed} input(s) failed; each has a row in {run}/manifests/errors", file=sys.stderr)
        return EXIT_FAILED_INPUTS
    return 0


if __name__ == "__main__":
    sys.exit(main())
