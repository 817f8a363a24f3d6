"""Serving: the rollout state machine, canary analysis, and the serving backends (plugins, listed in
``backends``: KServe, Seldon Core)."""
