"""What ``flwr run`` builds its FAB from: the checkout against the staged copy of the app, side by side.

``flwr run`` (and ``flwr build``) lists every file under the folder it is given, then keeps the
``fab-include`` files. Handed the checkout, it walks the virtual environment, the wheelhouse and the
data too; handed :func:`~fedimdb.deploy.flwr_cli.stage_app`'s copy, only the app. Both give the
same FAB (tests/test_submit.py). ``flwr build`` of each, alternating; the ratio of the medians.
Run from the repository root::

    python -m bench.submit
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_result
from fedimdb.deploy import APP_DIR
from fedimdb.deploy.flwr_cli import stage_app


def build_seconds(app: Path, out: Path) -> float:
    """Wall seconds of ``flwr build --app APP`` (a CLI process, as ``flwr run`` is)."""
    start = time.perf_counter()
    subprocess.run(["flwr", "build", "--app", str(app)], cwd=out, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.submit", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="builds timed per side (alternating)")
    args = p.parse_args(argv)
    files = sum(1 for _ in APP_DIR.rglob("*"))
    checkout, staged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(args.repeats):
            checkout.append(build_seconds(APP_DIR, out))
            start = time.perf_counter()
            app = stage_app(APP_DIR, out / "app")
            staged.append(build_seconds(app, out) + time.perf_counter() - start)
    figures = {
        "checkout_entries": files,
        "checkout_seconds": checkout,
        "staged_seconds": staged,
        "checkout_median": statistics.median(checkout),
        "staged_median": statistics.median(staged),
        "ratio_checkout_staged": statistics.median(checkout) / statistics.median(staged),
    }
    print(
        f"flwr build of the checkout ({files} entries): {figures['checkout_median']:.2f} s; of the staged app "
        f"(copy included): {figures['staged_median']:.2f} s; checkout/staged {figures['ratio_checkout_staged']:.1f}"
    )
    print(write_result("submit", figures, [sys.executable, "-m", "bench.submit", *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
