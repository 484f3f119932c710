"""One client's trainer: peak memory and step time for each micro-batch size, side by side.

Each arm is a fresh process (its peak RSS is its own) running ``fedimdb.training.train`` as a
client does: ``minilm``, batches of 16 real IMDB reviews at length 128, one torch thread (a
Compose client's ``CLIENT_THREADS``), 6 steps. The arms alternate, twice each. Run from the
repository root::

    python -m bench.trainer             # micro-batch sizes 16 (the whole batch), 8 and 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import DEFAULT_IMDB, write_result

BATCH = 16
STEPS = 6


def one_arm(micro: int, max_length: int, imdb: Path) -> dict[str, float]:
    """Load minilm, train ``STEPS`` batches; the loaded and peak RSS (MiB) and the median step (s)."""
    import pyarrow.parquet as pq

    from fedimdb.data import Examples
    from fedimdb.model import load_model, pick_device
    from fedimdb.training import seed_everything, train

    table = pq.read_table(imdb / "train.parquet").slice(0, BATCH * STEPS).to_pydict()
    data = Examples(table["text"], table["label"])
    model, tokenizer = load_model("minilm", 0)
    seed_everything(0, threads=1)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = []
    for _ in range(2):  # the first call warms up; timings from the second
        result = train(
            model,
            tokenizer,
            data,
            epochs=1,
            max_steps=STEPS,
            batch_size=BATCH,
            learning_rate=1e-4,
            max_length=max_length,
            seed=0,
            device=pick_device("cpu"),
            micro_batch_size=micro,
        )
        steps.append(result.seconds / result.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loaded_mib": loaded, "peak_mib": peak, "step_seconds": steps[-1]}


def run_arm(micro: int, max_length: int, imdb: Path) -> dict[str, float]:
    """``one_arm`` in a fresh interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "bench.trainer",
        "--one",
        str(micro),
        "--max-length",
        str(max_length),
        "--data-source",
        str(imdb),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Alternate the arms; print peak memory and step time against the whole batch."""
    p = argparse.ArgumentParser(prog="python -m bench.trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--micro", type=int, nargs="+", default=[16, 8, 4])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    a = p.parse_args(argv)
    if a.one is not None:
        print(json.dumps(one_arm(a.one, a.max_length, a.data_source)))
        return 0
    samples: dict[int, list[dict[str, float]]] = {m: [] for m in a.micro}
    for _ in range(2):
        for micro in a.micro:
            samples[micro].append(run_arm(micro, a.max_length, a.data_source))
    base = a.micro[0]
    arms = {}
    for micro, runs in samples.items():
        arms[micro] = {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
    for micro, arm in arms.items():
        print(
            f"micro-batch {micro:>2}: peak {arm['peak_mib']:6.0f} MiB ({arm['peak_mib'] / arms[base]['peak_mib']:.3f}), "
            f"step {arm['step_seconds']:.2f} s ({arm['step_seconds'] / arms[base]['step_seconds']:.3f}); "
            f"model loaded {arm['loaded_mib']:.0f} MiB"
        )
    figures = {"batch_size": BATCH, "steps": STEPS, "max_length": a.max_length, "arms": arms, "samples": samples}
    print(f"written: {write_result('trainer', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
