"""HTTP surface on the worker's web port: dashboard, JSON table views, /metrics."""
