"""bench/tta.py's arithmetic: time to accuracy, its ratios and milestones, from curves built by hand."""

from __future__ import annotations

from pathlib import Path

from bench.common import FedRun, RoundBreakdown, round_breakdown
from bench.tta import Curve, Size, milestone_seconds, round_chunk, table
from fedimdb.data import Examples

SIZE = Size(clients=2, rounds=3, steps=1, batch_size=4, max_length=8, eval_rows=4, target=0.8, milestones=(0.7,))
CENTRAL = Curve("centralised", (0.72, 0.81, 0.84), (10.0, 20.0, 30.0), (8, 16, 24))
STOCK = Curve("stock-flower", (0.6, 0.75, 0.82), (30.0, 60.0, 90.0), (8, 16, 24), bytes_per_round=100.0)
FAST = Curve("fedimdb", (0.71, 0.8, 0.83), (15.0, 30.0, 45.0), (8, 16, 24), bytes_per_round=25.0)
NEVER = Curve("lora-1e-3", (0.5, 0.6, 0.65), (5.0, 10.0, 15.0), (8, 16, 24), bytes_per_round=1.0)


def test_tta_is_the_time_of_the_first_round_at_the_target() -> None:
    assert FAST.reached(0.8) == 2 and FAST.tta(0.8) == 30.0  # at the target counts
    assert STOCK.reached(0.8) == 3 and STOCK.tta(0.8) == 90.0
    assert NEVER.reached(0.8) is None and NEVER.tta(0.8) is None


def test_table_gives_ratios_to_centralised_and_to_stock_flower_and_what_it_took() -> None:
    rows = {r["arm"]: r for r in table([CENTRAL, STOCK, FAST, NEVER], SIZE, fp32_bound=100.0)}
    fast = rows["fedimdb"]
    assert fast["tta_s"] == 30.0 and fast["tta_vs_centralised"] == 1.5 and fast["tta_vs_stock-flower"] == 30.0 / 90.0
    assert fast["rounds"] == 2 and fast["reviews"] == 16 and fast["bytes"] == 50.0
    assert fast["bytes_per_round_vs_fp32"] == 0.25 and fast["final_accuracy"] == 0.83
    never = rows["lora-1e-3"]
    assert never["tta_s"] is None and never["tta_vs_centralised"] is None and never["bytes"] is None
    assert rows["centralised"]["bytes"] is None  # one process moves no weights


def test_table_without_stock_flower_leaves_that_ratio_out() -> None:
    (row,) = (r for r in table([CENTRAL, FAST], SIZE, fp32_bound=100.0) if r["arm"] == "fedimdb")
    assert row["tta_vs_stock-flower"] is None and row["tta_vs_centralised"] == 1.5


def test_milestones_come_before_the_target() -> None:
    assert milestone_seconds([FAST, NEVER], SIZE) == {
        "fedimdb": {"0.70": 15.0, "0.80": 30.0},
        "lora-1e-3": {"0.70": None, "0.80": None},
    }


def test_a_rounds_breakdown_takes_the_slowest_client_of_each_round_and_skips_failed_ones() -> None:
    def client(rnd: str, train: str, setup: str) -> dict[str, str]:
        return {"round": rnd, "train_seconds": train, "setup_seconds": setup}

    rounds = [
        {"round_seconds": "20", "central_eval_seconds": "4"},
        {"round_seconds": "30", "central_eval_seconds": "6"},
    ]
    clients = [client("1", "8", "3"), client("1", "10", "1"), client("2", "12", "5"), client("2", "", "")]
    b = round_breakdown(FedRun(Path("run"), rounds, clients))
    assert b == RoundBreakdown(round_s=25.0, slowest_train_s=11.0, slowest_setup_s=4.0, central_eval_s=5.0)
    assert b.other_s == 25.0 - 11.0 - 4.0 - 5.0


def test_the_centralised_arm_starts_over_when_the_pooled_reviews_run_out() -> None:
    """Main size: 10 rounds of 2,560 reviews from ~22,500 pooled ones; every round trains a full round's worth."""
    data = Examples([f"review {i}" for i in range(5)], [i % 2 for i in range(5)])
    chunks = [round_chunk(data, k, 2) for k in range(4)]
    assert [c.texts for c in chunks] == [
        ["review 0", "review 1"],
        ["review 2", "review 3"],
        ["review 4", "review 0"],
        ["review 1", "review 2"],
    ]
    assert [c.labels for c in chunks] == [[0, 1], [0, 1], [0, 0], [1, 0]]
