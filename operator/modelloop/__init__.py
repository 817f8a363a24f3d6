"""modelloop: a Kubernetes operator that runs the machine-learning lifecycle as custom resources."""

__version__ = "0.1.0"
