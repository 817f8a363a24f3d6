"""The package as the model servers import it: without pandas, scikit-learn, joblib or onnxruntime."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_imports_no_pandas_scikit_learn_joblib_or_onnxruntime() -> None:
    script = (
        "import sys, modelloop_contracts; from modelloop_contracts import load_predictor; "
        "heavy = ('pandas', 'sklearn', 'joblib', 'onnxruntime'); "
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert process.stdout.strip() == "[]"


def test_the_detectors_api_loads_without_numpy() -> None:
    """The operator is the detector's client and has no use for numpy."""
    script = (
        "import sys; from modelloop_contracts.detector import Registration; "
        "from modelloop_contracts import VersionSpec; print('numpy' in sys.modules)"
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert process.stdout.strip() == "False"


def test_every_name_the_package_offers_is_found() -> None:
    import modelloop_contracts

    for name in modelloop_contracts.__all__:
        assert getattr(modelloop_contracts, name) is not None, name
