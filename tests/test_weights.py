"""Weight statistics on synthetic weights with known answers (fedimdb/weights.py)."""

from __future__ import annotations

import math

import pytest
import torch

from fedimdb.weights import GROUP, MODEL, TENSOR, ClientUpdate, client_rows, layer_group, robust_z, weight_rows


def _rows(rows: list[dict], scope: str) -> dict[str, dict]:
    return {r["name"]: r for r in rows if r["scope"] == scope}


def test_layer_groups_of_a_bert_classifier() -> None:
    assert layer_group("bert.embeddings.word_embeddings.weight") == "embeddings"
    assert layer_group("bert.encoder.layer.11.attention.self.query.weight") == "layer.11"
    assert layer_group("bert.pooler.dense.bias") == "pooler"
    assert layer_group("classifier.weight") == "classifier"


def test_tensor_group_and_model_statistics() -> None:
    previous = {
        "bert.encoder.layer.0.w": torch.zeros(2, 2),
        "classifier.weight": torch.tensor([3.0, 4.0]),
        "steps": torch.tensor([7]),
    }
    state = {
        "bert.encoder.layer.0.w": torch.tensor([[0.0, 0.0], [3.0, float("nan")]]),
        "classifier.weight": torch.tensor([3.0, 4.0]),
        "steps": torch.tensor([9]),
    }
    rows = weight_rows(2, state, previous)
    tensors = _rows(rows, TENSOR)
    assert set(tensors) == {"bert.encoder.layer.0.w", "classifier.weight"}, "integer buffers are left out"
    w = tensors["bert.encoder.layer.0.w"]
    assert (w["numel"], w["nonfinite"], w["zero_fraction"]) == (4, 1, 0.5)
    assert w["l2_norm"] == 3.0 and w["mean"] == 1.0 and w["min"] == 0.0 and w["max"] == 3.0  # over the finite values
    assert w["std"] == pytest.approx(math.sqrt(2.0))
    assert w["update_l2_norm"] == 3.0 and w["relative_update"] == 1.0
    c = tensors["classifier.weight"]
    assert c["l2_norm"] == 5.0 and c["update_l2_norm"] == 0.0 and c["relative_update"] == 0.0
    assert set(_rows(rows, GROUP)) == {"layer.0", "classifier"}
    model = _rows(rows, MODEL)["model"]
    assert model["l2_norm"] == pytest.approx(math.sqrt(9 + 25)) and model["update_l2_norm"] == 3.0
    assert model["nonfinite"] == 1 and model["numel"] == 6


def test_round_zero_has_no_update() -> None:
    (tensor, _group, model) = weight_rows(0, {"classifier.weight": torch.ones(4)}, None)
    assert tensor["l2_norm"] == 2.0 and tensor["update_l2_norm"] == "" and model["relative_update"] == ""


def test_robust_z_scores() -> None:
    assert robust_z([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx([-1.349, -0.6745, 0.0, 0.6745, 65.4265])
    assert robust_z([1.0, 1.0, 1.0, 5.0]) == pytest.approx([0.0, 0.0, 0.0, 0.7979 * 4 / 1.0])  # MAD 0: mean AD
    assert robust_z([2.0, 2.0]) == [0.0, 0.0]


def test_client_updates_cosine_distance_share_and_the_outlier() -> None:
    previous = {"w": torch.zeros(3)}
    aggregate = {"w": torch.tensor([1.0, 0.0, 0.0])}
    honest = [torch.tensor([1.0, 0.1 * k, 0.0]) for k in range(4)]
    clients = [ClientUpdate(k, 10 * (k + 1), {"w": w}) for k, w in enumerate(honest)]
    clients.append(ClientUpdate(4, 50, {"w": torch.tensor([-50.0, 0.0, float("inf")])}))
    rows = client_rows(3, previous, aggregate, clients, threshold=3.5)
    assert [r["partition_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["cosine_to_aggregate"] == 1.0 and rows[0]["distance_to_aggregate"] == 0.0
    assert rows[2]["update_l2_norm"] == pytest.approx(math.sqrt(1.04))
    assert rows[2]["cosine_to_aggregate"] == pytest.approx(1 / math.sqrt(1.04))
    assert rows[4]["cosine_to_aggregate"] == -1.0 and rows[4]["distance_to_aggregate"] == 51.0
    assert rows[1]["example_share"] == 20 / 150
    assert [r["nonfinite"] for r in rows] == [0, 0, 0, 0, 1]
    assert [r["outlier"] for r in rows] == [False, False, False, False, True]


def test_an_update_against_the_aggregate_is_an_outlier_a_merely_low_cosine_is_not() -> None:
    previous = {"w": torch.zeros(2)}
    aggregate = {"w": torch.tensor([1.0, 0.0])}
    angles = [0.0, 0.1, -0.1, 0.2, -0.2, 1.2, math.pi]  # 1.2 rad: cosine 0.36; pi: the same size, backwards
    clients = [ClientUpdate(k, 10, {"w": torch.tensor([math.cos(a), math.sin(a)])}) for k, a in enumerate(angles)]
    rows = client_rows(1, previous, aggregate, clients, threshold=3.5)
    assert rows[5]["cosine_z"] < -3.5 and rows[5]["cosine_to_aggregate"] > 0
    assert [r["outlier"] for r in rows] == [False] * 6 + [True]
