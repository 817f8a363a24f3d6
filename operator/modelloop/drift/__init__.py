"""Drift: when a DriftPolicy counts its target as drifted, and how it talks to the drift detector."""
