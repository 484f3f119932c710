"""``python -m fedimdb.inspect``: what happened to the model, round by round and client by client.

- :mod:`~fedimdb.inspect.report`: a run's (or an experiment's) weight_stats.csv and client_updates.csv
  read into a report: the layer groups that moved most, update norms per round, outlier clients,
  anomalies (NaN/Inf, exploding and vanishing updates, layer groups that never moved); as text or JSON.
- :mod:`~fedimdb.inspect.plots`: update norms per layer group, client-cosine heatmaps (PNG).
- :mod:`~fedimdb.inspect.evaluate`: any archived round's global model evaluated again.
- :mod:`~fedimdb.inspect.cli`: the command line.
"""
