"""How fedimdb is deployed: Flower's processes, locally or as a Compose stack, and the runs on them."""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2]  # the Flower App: pyproject.toml, server/, client/, docker-compose.yml
