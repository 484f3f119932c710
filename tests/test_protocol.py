"""What the ServerApp and the ClientApps say to each other: typed metrics through Flower's records."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedimdb.protocol import NUM_EXAMPLES, EvalMetrics, TrainMetrics


def test_train_metrics_travel_through_a_metric_record_unchanged() -> None:
    sent = TrainMetrics(
        partition_id=3, num_examples=40, loss=0.25, steps=5, seconds=1.5, samples_per_second=26.7, setup_seconds=0.5
    )
    record = sent.to_record()
    assert TrainMetrics.from_record(record) == sent
    assert isinstance(TrainMetrics.from_record(record).num_examples, int)


def test_eval_metrics_travel_through_a_metric_record_unchanged() -> None:
    sent = EvalMetrics(partition_id=1, num_examples=16, loss=0.5, accuracy=0.75)
    assert EvalMetrics.from_record(sent.to_record()) == sent


def test_fedavg_weights_replies_by_our_example_count_key() -> None:
    assert FedAvg().weighted_by_key == NUM_EXAMPLES
    assert NUM_EXAMPLES in TrainMetrics(0, 1, 0.0, 1, 0.0, 0.0, 0.0).to_record()


def test_float16_transport_halves_the_bytes_and_comes_back_as_float32() -> None:
    import torch

    from fedimdb.protocol import received_state, transport_arrays

    state = {"w": torch.randn(64, 32), "ids": torch.arange(10)}
    full, half = transport_arrays(state, "float32"), transport_arrays(state, "float16")
    assert half.count_bytes() < 0.52 * full.count_bytes()
    back = received_state(half)
    assert back["w"].dtype == torch.float32 and back["ids"].dtype == state["ids"].dtype
    torch.testing.assert_close(back["w"], state["w"], rtol=1e-3, atol=1e-3)
    assert torch.equal(back["ids"], state["ids"])
    assert torch.equal(received_state(full)["w"], state["w"])
