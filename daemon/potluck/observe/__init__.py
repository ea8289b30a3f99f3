"""Seeing a run: ``/metrics`` for Prometheus (metrics.py) and the dashboard a browser loads
(dashboard.py, static/), both served read-only by the node over a small HTTP server (http.py) and both
built from the control API's replies at each request (potluck.rpc.replies): no bookkeeping of their own.
serve.py starts them beside a node (potluck.lifecycle)."""
