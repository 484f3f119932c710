"""Prometheus configuration and alerts, Grafana provisioning and dashboard, and a renderer of its queries."""
