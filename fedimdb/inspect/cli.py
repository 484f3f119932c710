"""The command line: a run's or an experiment's report (text or JSON) and plots; ``evaluate`` of one round.

python -m fedimdb.inspect PATH [--json] [--plots DIR | --no-plots]
python -m fedimdb.inspect evaluate RUN_DIR --round K [--data FILE.parquet] [--rows N] [--held-out DIR] [--json]

PATH is a run folder (an experiment's repeat-K) or an experiment folder (every repeat-K in it).
Bad input is one line ``error: ...`` on stderr naming the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedimdb.artifacts import ArtifactError
from fedimdb.config import ConfigError
from fedimdb.data import ShardError
from fedimdb.inspect.evaluate import EvalOutcome, evaluate_round, read_run_meta
from fedimdb.inspect.plots import write_plots
from fedimdb.inspect.report import InspectError, read_path, render_text

EVALUATE = "evaluate"  # the subcommand; a folder of that name: pass it as ./evaluate
PLOTS_DIR = "inspect"  # default folder of the plots, inside PATH
USAGE_ERROR = 2
ERRORS = (InspectError, ConfigError, ShardError, ArtifactError, OSError)


def report_parser() -> argparse.ArgumentParser:
    epilog = f"evaluate one round again: python -m fedimdb.inspect {EVALUATE} --help"
    p = argparse.ArgumentParser(prog="python -m fedimdb.inspect", description=__doc__.split("\n\n")[0], epilog=epilog)
    p.add_argument("path", type=Path, help="a run folder (repeat-K) or an experiment folder (all its repeat-K)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    plots = p.add_mutually_exclusive_group()
    plots.add_argument("--plots", type=Path, metavar="DIR", help=f"folder of the PNG plots (default: PATH/{PLOTS_DIR})")
    plots.add_argument("--no-plots", action="store_true", help="write no plots")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m fedimdb.inspect {EVALUATE}", description="Evaluate one round's archived global model again."
    )
    p.add_argument("run", type=Path, help="a run folder (an experiment's repeat-K)")
    p.add_argument("--round", type=int, required=True, help="the round (0: the initial model)")
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="a Parquet file with text and label columns "
        "(default: the rows the server evaluated: the first eval-rows of the held-out set)",
    )
    p.add_argument("--rows", type=_positive, help="evaluate only the first N rows")
    p.add_argument(
        "--held-out",
        type=Path,
        metavar="DIR",
        help="the run's held-out folder (SHARDS_DIR/server) "
        "when it is not where the run had it (a Docker run's /held-out)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: the run's device, auto read as cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give a number of rows >= 1")
    return value


def run_report(args: argparse.Namespace) -> None:
    """Print the report; write the plots (their paths on stderr)."""
    report = read_path(args.path)
    paths = [] if args.no_plots else write_plots(report, args.plots or args.path / PLOTS_DIR)
    print(json.dumps(report.as_dict(), indent=2, allow_nan=False) if args.json else render_text(report))
    for path in paths:
        print(f"plot: {path}", file=sys.stderr)


def render_outcome(out: EvalOutcome) -> str:
    """An evaluation beside what the run recorded, as text."""
    lines = [
        f"round {out.round}: accuracy {out.accuracy:.6g}, loss {out.loss:.6g} on {out.examples} reviews "
        f"({out.source}, {out.device})"
    ]
    if out.recorded_accuracy is None:
        lines.append("recorded by the run: nothing for this round")
    else:
        verdict = {True: "the same, bit for bit", False: "different", None: "on the server's rows, not these"}
        lines.append(
            f"recorded by the run: accuracy {out.recorded_accuracy:.6g}, loss {out.recorded_loss:.6g} "
            f"({verdict[out.matches]})"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> None:
    """Evaluate the round in a process set up as the ServerApp's (seed, threads, deterministic kernels)."""
    from transformers.utils import logging as hf_logging

    from fedimdb.training import seed_everything

    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr, per load
    config = read_run_meta(args.run).get("config", {})
    seed_everything(int(config.get("seed", 0)), int(config.get("torch-threads", 0)))
    out = evaluate_round(args.run, args.round, args.data, args.rows, held_out=args.held_out, device=args.device)
    print(json.dumps(out.as_dict(), indent=2) if args.json else render_outcome(out))


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line ``error: ...`` on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == [EVALUATE]:
            run_evaluate(evaluate_parser().parse_args(argv[1:]))
        else:
            run_report(report_parser().parse_args(argv))
    except ERRORS as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return USAGE_ERROR
    return 0
