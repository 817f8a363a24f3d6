"""What modelloop's runtimes agree on, in one place: each runtime's environment and image installs this
package, since the runtimes cannot import one another.

- :mod:`~modelloop_contracts.layout`: the artifact folder the trainer writes (file names, ``model.json``'s
  format, ``model.onnx``'s input, outputs and manifest), which the model servers, the drift detector and
  the next run's champion evaluation read.
- :mod:`~modelloop_contracts.dataset`: the dataset hash, computed by the trainer and the drift detector.
- :mod:`~modelloop_contracts.loading`: an artifact folder loaded for serving, by both model servers, once
  its model file's digest is the one registered.
- :mod:`~modelloop_contracts.testing`: the runtimes' tests' shared helpers (the real trainer run on real
  data); imported by tests only, never with the package.
- :mod:`~modelloop_contracts.detector`: the drift detector's HTTP API, for the detector and its clients.

Nothing heavy is imported with it: each module loads when one of its names is first used (numpy with
``dataset`` and ``loading``; pandas for :func:`dataset_hash`, scikit-learn with joblib for a
``model.joblib`` and onnxruntime for a ``model.onnx`` only when called), so the model servers need no
pandas and the operator no numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelloop_contracts.dataset import dataset_hash
    from modelloop_contracts.detector import (
        DEFAULT_ENDPOINT,
        ENDPOINTS,
        ExportedDataset,
        ExportRequest,
        InvalidMessage,
        Registration,
        VersionSpec,
    )
    from modelloop_contracts.layout import (
        HOLDOUT_FILE,
        HOLDOUT_LABEL_COLUMN,
        HOLDOUT_PREDICTION_COLUMN,
        HOLDOUT_PROBABILITY_PREFIX,
        METRICS_FILE,
        MODEL_FILES,
        ONNX_CLASS_OUTPUT,
        ONNX_FORMAT,
        ONNX_INPUT,
        ONNX_MANIFEST_KEY,
        ONNX_MODEL_FILE,
        ONNX_PROBABILITIES_OUTPUT,
        ONNX_VALUE_OUTPUT,
        PREDICTION_COLUMN,
        PROBABILITIES_KEY,
        REFERENCE_FILE,
        REFERENCE_PREDICTIONS_FILE,
        RESULT_FILE,
        SKLEARN_MODEL_FILE,
        TORCH_ARCHITECTURE_FILE,
        TORCH_ARCHITECTURE_FORMAT,
        TORCH_MODEL_FILE,
        holdout_probability_column,
        holdout_probability_label,
    )
    from modelloop_contracts.loading import (
        DIGEST_ALGORITHMS,
        TERMINATION_LOG,
        Array,
        ArtifactError,
        DigestMismatch,
        Predictor,
        load_predictor,
        python_scalar,
        write_termination_message,
    )

# Where each name lives: the package imports a module only when one of its names is used, so that a
# client of the detector's API (the operator) loads no numpy.
_HOME = {
    "dataset_hash": "dataset",
    **dict.fromkeys(
        ("DEFAULT_ENDPOINT", "ENDPOINTS", "ExportedDataset", "ExportRequest", "InvalidMessage",
         "Registration", "VersionSpec"),
        "detector",
    ),
    **dict.fromkeys(
        ("HOLDOUT_FILE", "HOLDOUT_LABEL_COLUMN", "HOLDOUT_PREDICTION_COLUMN", "HOLDOUT_PROBABILITY_PREFIX",
         "METRICS_FILE", "MODEL_FILES", "ONNX_CLASS_OUTPUT", "ONNX_FORMAT", "ONNX_INPUT", "ONNX_MANIFEST_KEY",
         "ONNX_MODEL_FILE", "ONNX_PROBABILITIES_OUTPUT", "ONNX_VALUE_OUTPUT", "PREDICTION_COLUMN",
         "REFERENCE_FILE", "REFERENCE_PREDICTIONS_FILE", "RESULT_FILE", "SKLEARN_MODEL_FILE",
         "TORCH_ARCHITECTURE_FILE", "TORCH_ARCHITECTURE_FORMAT", "TORCH_MODEL_FILE", "PROBABILITIES_KEY",
         "holdout_probability_column", "holdout_probability_label"),
        "layout",
    ),
    **dict.fromkeys(
        ("DIGEST_ALGORITHMS", "TERMINATION_LOG", "Array", "ArtifactError", "DigestMismatch", "Predictor",
         "load_predictor", "python_scalar", "write_termination_message"),
        "loading",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'modelloop_contracts' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelloop_contracts.{home}"), name)


__all__ = [
    "DEFAULT_ENDPOINT",
    "DIGEST_ALGORITHMS",
    "ENDPOINTS",
    "HOLDOUT_FILE",
    "HOLDOUT_LABEL_COLUMN",
    "HOLDOUT_PREDICTION_COLUMN",
    "HOLDOUT_PROBABILITY_PREFIX",
    "METRICS_FILE",
    "MODEL_FILES",
    "ONNX_CLASS_OUTPUT",
    "ONNX_FORMAT",
    "ONNX_INPUT",
    "ONNX_MANIFEST_KEY",
    "ONNX_MODEL_FILE",
    "ONNX_PROBABILITIES_OUTPUT",
    "ONNX_VALUE_OUTPUT",
    "PREDICTION_COLUMN",
    "PROBABILITIES_KEY",
    "REFERENCE_FILE",
    "REFERENCE_PREDICTIONS_FILE",
    "RESULT_FILE",
    "SKLEARN_MODEL_FILE",
    "TERMINATION_LOG",
    "TORCH_ARCHITECTURE_FILE",
    "TORCH_ARCHITECTURE_FORMAT",
    "TORCH_MODEL_FILE",
    "Array",
    "ArtifactError",
    "DigestMismatch",
    "ExportRequest",
    "ExportedDataset",
    "InvalidMessage",
    "Predictor",
    "Registration",
    "VersionSpec",
    "dataset_hash",
    "holdout_probability_column",
    "holdout_probability_label",
    "load_predictor",
    "python_scalar",
    "write_termination_message",
]
