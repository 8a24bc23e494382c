"""Metrics (Prometheus, a registry per app) and logs (structlog JSON, one canonical line per request)."""
