"""Prometheus metrics (the server's and the handlers'), and the /proc and GPU readings they use."""
