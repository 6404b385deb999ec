"""Observability: Prometheus instruments, traces, request and lifecycle logs, drift."""
