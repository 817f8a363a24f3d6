"""Shared set-up: real scikit-learn data, and artifact folders in the trainer's layout."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression, LogisticRegression

from modelloop_contracts import SKLEARN_MODEL_FILE


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Iris's rows, its labels as names (as a table read from a file has them) and its feature names."""
    bunch = datasets.load_iris()
    return bunch.data, bunch.target_names[bunch.target], [str(name) for name in bunch.feature_names]


@pytest.fixture
def iris_artifact(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray, list[str]]) -> Path:
    """A folder holding a classifier fitted on a named table, as the trainer fits and writes one."""
    rows, labels, names = iris
    model = LogisticRegression(max_iter=500).fit(pd.DataFrame(rows, columns=names), labels)
    joblib.dump(model, tmp_path / SKLEARN_MODEL_FILE)
    return tmp_path


@pytest.fixture
def diabetes_artifact(tmp_path: Path) -> Path:
    """A folder holding a regressor fitted on plain rows (no feature names)."""
    rows, target = datasets.load_diabetes(return_X_y=True)
    joblib.dump(LinearRegression().fit(rows, target), tmp_path / SKLEARN_MODEL_FILE)
    return tmp_path
