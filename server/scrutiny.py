"""The rows of weight_stats.csv and client_updates.csv, filled in as rounds go (statistics: fedimdb/weights.py).

:class:`WeightLog` keeps the previous global model, describes each new one, and compares each
round's client updates with the aggregated one; writing the rows is the ServerApp's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fedimdb.weights import ClientUpdate, State, client_rows, weight_rows


class WeightLog:
    """Weight statistics of a run, round by round.

    Parameters
    ----------
    outlier_z : float
        Robust z-score beyond which a client's update is flagged as an outlier.
    weights, clients : list of dict, optional
        Rows of earlier rounds to go on from (a continued run: server/continuation.py).
    previous : State, optional
        The last of those rounds' global model, which the next is compared with.
    """

    def __init__(
        self,
        outlier_z: float,
        weights: Iterable[dict] = (),
        clients: Iterable[dict] = (),
        previous: State | None = None,
    ) -> None:
        self.outlier_z = outlier_z
        self.weights: list[dict] = list(weights)
        self.clients: list[dict] = list(clients)
        self._previous = previous

    def global_model(self, server_round: int, state: State) -> None:
        """Round ``server_round``'s global model (0: the initial one), against the round before."""
        self.weights += weight_rows(server_round, state, self._previous)
        self._previous = state

    def client_updates(self, server_round: int, sent: State, aggregate: State, updates: Sequence[ClientUpdate]) -> None:
        """The round's aggregated client updates, against the model ``sent`` and the ``aggregate``."""
        self.clients += client_rows(server_round, sent, aggregate, updates, self.outlier_z)
