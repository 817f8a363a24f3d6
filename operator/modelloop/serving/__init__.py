"""Serving: the rollout state machine, canary analysis, and the serving backends (KServe)."""
