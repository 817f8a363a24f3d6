"""KS and Chi-square without alibi-detect's import chain: alibi-detect's numbers, and no PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import numeric_rows, write_reference
from modelloop_detector.univariate import ChiSquareTest, KSTest


def alibi_result(detector: object, window: np.ndarray) -> dict[str, object]:
    result: dict[str, object] = detector.predict(  # type: ignore[attr-defined]
        window, drift_type="batch", return_p_val=True, return_distance=True
    )["data"]
    return result


@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
@pytest.mark.parametrize("shift", [0.0, 0.15, 1.0])
def test_ks_gives_alibi_detects_statistics_p_values_and_verdict(correction: str, shift: float) -> None:
    from alibi_detect.cd import KSDrift

    reference = numeric_rows(300, seed=1)
    window = numeric_rows(150, seed=7)
    window[:, 1] += shift
    ours = KSTest(reference, p_value=0.05, correction=correction).judge(window)  # type: ignore[arg-type]
    theirs = alibi_result(KSDrift(reference, p_val=0.05, correction=correction), window)
    np.testing.assert_array_equal(ours.p_values, theirs["p_val"])
    np.testing.assert_array_equal(ours.distances, theirs["distance"])
    assert ours.drift is bool(theirs["is_drift"])
    if ours.drift or correction == "bonferroni":
        assert ours.threshold == pytest.approx(float(theirs["threshold"]))  # type: ignore[arg-type]
    else:  # alibi-detect returns every FDR step when none is passed; ours is the smallest
        assert ours.threshold == pytest.approx(float(np.min(theirs["threshold"])))  # type: ignore[call-overload]


@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
@pytest.mark.parametrize("drifted", [False, True])
def test_chi_square_gives_alibi_detects_statistics_p_values_and_verdict(
    correction: str, drifted: bool
) -> None:
    from alibi_detect.cd import ChiSquareDrift

    rng = np.random.default_rng(3)
    reference = np.column_stack([rng.integers(0, 3, 400), rng.integers(0, 2, 400)]).astype(np.float64)
    window = np.column_stack([rng.integers(0, 3, 120), rng.integers(0, 2, 120)]).astype(np.float64)
    if drifted:
        window[:60, 0] = 3.0  # a category the reference never had
        window[:, 1] = 1.0
    ours = ChiSquareTest(reference, p_value=0.05, correction=correction).judge(window)  # type: ignore[arg-type]
    theirs = alibi_result(ChiSquareDrift(reference, p_val=0.05, correction=correction), window)
    np.testing.assert_allclose(ours.p_values, theirs["p_val"], rtol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.distances, theirs["distance"], rtol=1e-6)  # type: ignore[arg-type]
    assert ours.drift is bool(theirs["is_drift"]) is drifted


def test_registering_a_ks_service_does_not_import_torch(tmp_path: Path) -> None:
    uri = write_reference(tmp_path, numeric_rows(100, seed=1))
    script = f"""
import json, sys
from modelloop_contracts import Registration, VersionSpec
from modelloop_detector import DetectorSettings, DriftService, WindowSettings
from modelloop_detector.artifacts import ArtifactRoots
from modelloop_detector.cli import build_parser, build_detector
service = DriftService(WindowSettings(min_rows=5), DetectorSettings(device="cpu"),
                       roots=ArtifactRoots([{tmp_path.as_uri()!r}]))
registration = Registration("iris", {{"3": VersionSpec({uri!r})}}, None, ("sepal_length",))
result = service.register("ml", "iris", registration)
assert not result.errors, result.errors
state = service.service("ml", "iris")
version = state.versions["3"]
version.window.append(version.reference.rows[:50], version.reference.rows[:50, 0],
                      version.reference.rows[:50, 0].astype(object), [str(i) for i in range(50)], 0.0)
verdicts = service.judge(state, version, "fast")
loaded = sorted(m for m in ("torch", "tensorflow", "alibi_detect") if m in sys.modules)
print(json.dumps({{"verdicts": [v.detector for v in verdicts], "loaded": loaded}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"verdicts": ["ks", "chi2"], "loaded": []}
