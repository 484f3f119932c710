"""fedimdb: federated fine-tuning of a transformer sentiment classifier on IMDB, with Flower."""

__version__ = "0.1.0"
