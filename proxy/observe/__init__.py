"""Observability: stats, routing metrics, recommendations, Prometheus metrics, logs, exports."""
