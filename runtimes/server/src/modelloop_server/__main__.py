"""``python -m modelloop_server``: the same as ``modelloop-serve``."""

from modelloop_server.cli import main

main()
