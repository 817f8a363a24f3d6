"""The trainer's own version (also the package version, read by setuptools)."""

TRAINER_VERSION = "0.1.0"
