"""The ``modelloop`` command (and the kubectl plugin ``kubectl modelloop``): the group and its shared
options in ``main``, one module per family of commands; importing this package registers them all."""

from modelloop.cli import registry, rollout, training
from modelloop.cli.main import main

__all__ = ["main", "registry", "rollout", "training"]
