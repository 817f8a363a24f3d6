"""``python -m modelloop_trainer``: the same as the ``modelloop-train`` command."""

import sys

from modelloop_trainer.cli import main

sys.exit(main())
