"""The int8 weight transport: each element within its stated bound, a quarter of the bytes, a wrong reference refused."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from fedimdb.model import load_model
from fedimdb.protocol import INT8, TransportError, received_state, state_digest, transport_arrays
from fedimdb.quantize import error_bound, quantise
from server.checks import Expected, train_reply_problem


def _max_error(x: torch.Tensor) -> float:
    return float((quantise(x).restore() - x).abs().max())


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 50.0])
def test_round_trip_stays_within_half_a_step(scale: float) -> None:
    x = torch.randn(300, 70, generator=torch.Generator().manual_seed(1)) * scale + scale / 3
    slack = 4 * torch.finfo(torch.float32).eps * float(x.abs().max())  # float32 rounding of low + code * step
    assert _max_error(x) <= error_bound(x) + slack
    assert error_bound(x) == pytest.approx(float(x.max() - x.min()) / 510)


def test_the_bound_is_reached_not_just_respected() -> None:
    """Half a step is the worst case: values halfway between two codes come back half a step off."""
    step = 1.0 / 255
    x = torch.cat([torch.tensor([0.0, 1.0]), (torch.arange(254) + 0.5) * step])
    assert _max_error(x) == pytest.approx(error_bound(x), rel=1e-3)


def test_constant_and_empty_tensors_come_back_exactly() -> None:
    assert torch.equal(quantise(torch.full((5, 3), 0.25)).restore(), torch.full((5, 3), 0.25))
    assert quantise(torch.zeros(0, 4)).restore().shape == (0, 4)


def _model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    model, _ = load_model("tiny", seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_round_of_int8_transport_both_ways_stays_within_the_bound() -> None:
    """Server -> client against the model both load; client -> server against the model the client received."""
    reference = _model_state()  # what the server and every client load before round 1
    torch.manual_seed(3)
    global_state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.items()}

    down = transport_arrays(global_state, INT8, reference)
    received = received_state(down, _model_state())  # the client's own load of the same model
    trained = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in received.items()}
    up = transport_arrays(trained, INT8, received)
    decoded = received_state(up, received_state(down, reference))  # the server decodes what the client received

    for name, value in global_state.items():
        if not value.is_floating_point():
            assert torch.equal(received[name], value) and torch.equal(decoded[name], value)
            continue
        slack = 1e-6 * float(value.abs().max())
        assert (received[name] - value).abs().max() <= error_bound(value - reference[name]) + slack
        assert (decoded[name] - trained[name]).abs().max() <= error_bound(trained[name] - received[name]) + slack
        assert decoded[name].dtype == torch.float32


def test_int8_transport_carries_a_quarter_of_the_bytes() -> None:
    """A byte per element, plus a few hundred bytes per tensor (its map and array header) and the digest."""
    state = {"w": torch.randn(1024, 384), "b": torch.randn(384), "ids": torch.arange(512)}
    full = ArrayRecord(state).count_bytes()
    assert transport_arrays(state, INT8, state).count_bytes() <= 0.26 * full


def test_a_reply_against_another_reference_cannot_be_decoded() -> None:
    reference, other = _model_state(0), _model_state(1)
    assert state_digest(reference) != state_digest(other)
    with pytest.raises(TransportError, match="weight-transport=float32"):
        received_state(transport_arrays(reference, INT8, reference), other)


def test_a_non_finite_update_is_refused_in_int8_too() -> None:
    """NaN in an update makes its step NaN: the reply is refused like a float32 one holding NaN."""
    from flwr.app import MetricRecord, RecordDict

    from fedimdb.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID

    reference = _model_state()
    expected = Expected.of(transport_arrays(reference, INT8, reference), max_examples=None)
    broken = {k: v.clone() for k, v in reference.items()}
    name = next(k for k, v in broken.items() if v.is_floating_point() and v.dim() == 2)
    broken[name].view(-1)[0] = float("nan")

    def reply(state: dict[str, torch.Tensor]) -> RecordDict:
        metrics = MetricRecord({PARTITION_ID: 0, NUM_EXAMPLES: 16})
        return RecordDict({ARRAYS: transport_arrays(state, INT8, reference), METRICS: metrics})

    assert train_reply_problem(reply(reference), expected) is None
    assert "non-finite" in str(train_reply_problem(reply(broken), expected))
