"""Ways to stand up a Flower federation for one run: local processes, or Docker Compose."""
