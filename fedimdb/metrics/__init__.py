"""Prometheus metrics of fedimdb: the orchestrator's, the ServerApp's and each ClientApp's.

- :mod:`fedimdb.metrics.experiment`: the orchestrator (repeats, the current round, the ETA),
  served by orchestrate.py itself.
- :mod:`fedimdb.metrics.server` and :mod:`fedimdb.metrics.client`: what the ServerApp and the
  ClientApps record. Flower starts a process per run (``flwr-serverapp``) and per message
  (``flwr-clientapp``), so they record in prometheus-client's multiprocess mode: values go to files
  in ``PROMETHEUS_MULTIPROC_DIR``, and one long-lived exporter (:mod:`fedimdb.metrics.exporter`)
  per container serves them all. Without that variable they record into their own process only.
- monitoring/ (Prometheus configuration and alerts, Grafana provisioning and dashboard) reads
  these names; tests/test_monitoring.py keeps the two in step.
"""
