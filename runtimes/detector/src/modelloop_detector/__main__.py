"""``python -m modelloop_detector``."""

from modelloop_detector.cli import main

main()
