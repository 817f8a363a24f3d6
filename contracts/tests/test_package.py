"""The package as the model servers import it: without pandas, scikit-learn or joblib."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_imports_neither_pandas_nor_scikit_learn_nor_joblib() -> None:
    script = (
        "import sys, modelloop_contracts; "
        "print(sorted(name for name in ('pandas', 'sklearn', 'joblib') if name in sys.modules))"
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert process.stdout.strip() == "[]"
