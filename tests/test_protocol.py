"""What the ServerApp and the ClientApps say to each other: typed metrics through Flower's records."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedimdb.protocol import NUM_EXAMPLES, EvalMetrics, TrainMetrics


def test_train_metrics_travel_through_a_metric_record_unchanged() -> None:
    sent = TrainMetrics(partition_id=3, num_examples=40, loss=0.25, steps=5, seconds=1.5, samples_per_second=26.7)
    record = sent.to_record()
    assert TrainMetrics.from_record(record) == sent
    assert isinstance(TrainMetrics.from_record(record).num_examples, int)


def test_eval_metrics_travel_through_a_metric_record_unchanged() -> None:
    sent = EvalMetrics(partition_id=1, num_examples=16, loss=0.5, accuracy=0.75)
    assert EvalMetrics.from_record(sent.to_record()) == sent


def test_fedavg_weights_replies_by_our_example_count_key() -> None:
    assert FedAvg().weighted_by_key == NUM_EXAMPLES
    assert NUM_EXAMPLES in TrainMetrics(0, 1, 0.0, 1, 0.0, 0.0).to_record()
