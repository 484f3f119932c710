"""fedimdb's ClientApp (client/client_app.py) behind the fault mod: the train, evaluate and query
functions are fedimdb's own, registered on an app whose every message passes through :func:`fault_mod`."""

from __future__ import annotations

from flwr.clientapp import ClientApp

from client.client_app import evaluate, identify, train

from .faults import fault_mod

app = ClientApp(mods=[fault_mod])
app.train()(train)
app.evaluate()(evaluate)
app.query()(identify)
