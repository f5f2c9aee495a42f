"""`python -m pipeline curate SRC` runs the chain; `python -m pipeline stage NAME --run RUN` one stage;
`python -m pipeline weights` downloads the models of a profile into the Hugging Face cache.

Exit codes: 0 all inputs processed, 2 usage error (such as a missing SRC or an unknown config
key), 3 finished but some inputs failed (each has a row in the `errors` table), 4 model weights
missing (nothing was run), 5 the run folder is in use by another process (named in the message),
6 the run folder cannot be written (disk full, read-only); `manifests/exits.py` has them all.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from manifests.exits import EXIT_FAILED_INPUTS, EXIT_MISSING_WEIGHTS, EXIT_RUN_IN_USE, StorageError, UsageError, command, nearest, storage_failure
from manifests.files import RunInUse, RunLock, sweep_temporaries
from manifests.filters import FilterConfig
from manifests.report import is_current, write_report
from model.hub import MissingWeights, quiet_loads, require, resolve_file
from pipeline.config import RunConfig, load_config, write_run_config
from pipeline.placement import PlanError
from pipeline.registry import STAGES
from pipeline.runner import run_chain, start_ray_soon, stop_ray
from pipeline.summary import summarize


def model_refs(config: RunConfig, names: list[str]) -> dict[str, tuple[str, str | None]]:
    """name -> (ref, file or None) of every model the given stages load."""
    refs = {}
    for name in names:
        stage_config = getattr(config, name)
        if hasattr(stage_config, "weights"):
            refs.update(stage_config.weights())
    return refs


def check_weights(config: RunConfig, names: list[str]) -> None:
    """Raise one MissingWeights naming every model of these stages that is not on this machine."""
    refs = model_refs(config, names)
    missing = {}
    try:
        require({name: ref for name, (ref, _) in refs.items()})
    except MissingWeights as error:
        missing.update(error.missing)
    for name, (ref, filename) in refs.items():
        if filename and name not in missing:
            try:
                resolve_file(ref, filename)
            except MissingWeights as error:
                missing.update({name: next(iter(error.missing.values()))})
    if missing:
        raise MissingWeights(missing)


def download_weights(config: RunConfig) -> None:
    """Fill the Hugging Face cache with the files each hub model's loader reads (listed in the README):
    the stages' models, the training config's (`encode` names it), and `make eval`'s. Local folders
    are left alone."""
    from model.cinema.evaluate import EvalConfig
    from model.curation.clip import FILES as CLIP_FILES
    from model.hub import download, download_transformers
    from model.train.text_encoder import FILES as T5_FILES

    model = config.encode.training().model
    parts = {"encode.vae": model.vae, "train.transformer": model.transformer, "train.scheduler": model.scheduler}
    if model.aligner is not None:
        parts["train.aligner"] = model.aligner
    refs = {**model_refs(config, list(STAGES)), **EvalConfig().weights()}
    refs.update({name: (part.ref, None) for name, part in parts.items()})
    folders = {name: [f"{part.subfolder}/*" if part.subfolder else "*"] for name, part in parts.items()}
    folders["train.transformer"].append("model_index.json")  # what the base refuses by (Wan2.2-A14B, I2V)
    files = {"aesthetic.clip": CLIP_FILES, "subjects.clip": CLIP_FILES, "eval.clip": CLIP_FILES, "encode.t5": T5_FILES, **folders}
    for name, (ref, filename) in refs.items():
        if Path(ref).expanduser().exists():
            print(f"{name}: {ref} (local)")
            continue
        print(f"{name}: downloading {ref}{'/' + filename if filename else ''}")
        if filename:
            download(ref, [filename])
        elif name in files:
            download(ref, files[name])
        else:  # a transformers model with its processor: caption, MLLM, detectors, DINO
            download_transformers(ref)


def write_report_or_warn(run: Path, filters: FilterConfig) -> None:
    """The report is for people: failing to write it warns and never changes the exit code."""
    try:
        print(f"  report    {write_report(run, filters)}")
    except Exception as error:
        print(f"warning: no report written: {type(error).__name__}: {error}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    curate = sub.add_parser("curate", help="run the chain of stages on a folder of videos")
    curate.add_argument("src", type=Path, help="folder (or file) of raw videos")
    curate.add_argument("--out", type=Path, help="run folder (default: runs/<name of SRC>)")
    curate.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    curate.add_argument("--config", type=Path, help="YAML config file")
    curate.add_argument("--profile", choices=["full", "tiny"], help="model profile (default full; see pipeline/profiles.yaml)")
    curate.add_argument("--extensions", help="comma-separated file extensions taken as videos (default: probe.extensions)")
    weights = sub.add_parser("weights", help="download the models of a profile (needs internet)")
    weights.add_argument("--config", type=Path, help="YAML config file naming other models")
    weights.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (encode.train_config=...)")
    stage = sub.add_parser("stage", help="run one stage of an existing run (on a cluster with RAY_ADDRESS)")
    stage.add_argument("name", choices=list(STAGES))
    stage.add_argument("--run", type=Path, required=True, help="run folder")
    for cmd in (curate, stage):
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
        cmd.add_argument("--workers", type=int, help="parallel CPU workers")
        cmd.add_argument("--retry-errors", action="store_true", help="retry inputs that failed before")
    return p


@command
def main(argv: list[str] | None = None, keep_ray: bool = True) -> int:
    """keep_ray=False when nothing else in the process will use Ray (the command line): it then
    stops while the summary and the report are written; tests keep one Ray for all their runs."""
    args = _parser().parse_args(argv)
    if args.command == "weights":
        download_weights(load_config(args.config, args.set))
        return 0
    quiet_loads()  # before Ray starts: its workers load the models
    cli = {"workers": args.workers} if args.workers is not None else {}
    if args.command == "curate":
        if not args.src.exists():
            raise UsageError(f"SRC does not exist: {args.src}")
        run = args.out or Path("runs") / args.src.resolve().name
        config_file = args.config or (run / "config.yaml" if (run / "config.yaml").exists() else None)
        cli["src"] = str(args.src.resolve())
        if args.stages:
            cli["stages"] = [s.strip() for s in args.stages.split(",")]
        if args.extensions:
            cli["probe"] = {"extensions": [e.strip() for e in args.extensions.split(",") if e.strip()]}
        config = load_config(config_file, args.set, args.profile, cli)
        names = config.stages
    else:
        run = args.run
        if not (run / "config.yaml").exists():
            raise UsageError(f"{run} is not a run folder (no config.yaml)")
        config = load_config(run / "config.yaml", args.set, cli=cli)
        names = [args.name]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r} ({nearest(unknown[0], list(STAGES))}); stages are {', '.join(STAGES)}")
    try:  # before any work, before Ray starts
        check_weights(config, names)
    except MissingWeights as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_MISSING_WEIGHTS
    started = time.perf_counter()
    try:
        with RunLock(run):
            if args.command == "curate" and not (run / "config.yaml").exists():
                start_ray_soon(config.workers)  # a new run has work; a resumed one may have none and start no Ray
            sweep_temporaries(run)
            write_run_config(run, config)
            reports = run_chain([STAGES[name] for name in names], config, run, args.retry_errors)
            if not keep_ray:  # its processes take ~1.5 s to stop: they do while the summary and report are written
                threading.Thread(target=stop_ray, name="stop-ray").start()
            text, failed = summarize(run, reports, time.perf_counter() - started)
            print(text)
            if args.command == "curate" and (any(r.inputs for r in reports) or not is_current(run)):
                write_report_or_warn(run, config.filter)
    except RunInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_IN_USE
    except PlanError as error:  # overrides that ask for more GPUs than the cluster has
        raise UsageError(f"{error}; set fewer `gpus` or `actors`") from error
    except OSError as error:  # the run folder's own storage: one line and its own code (exits.command)
        line = storage_failure(error, run)
        if line is None:
            raise
        raise StorageError(line) from error
    if failed:
        print(f"{failed} input(s) failed; each has a row in {run}/manifests/errors (retry them: the same command with --retry-errors)", file=sys.stderr)
        return EXIT_FAILED_INPUTS
    return 0


if __name__ == "__main__":
    sys.exit(main(keep_ray=False))
