"""The artifact folder: the files the trainer writes for one run, which the model servers, the drift
detector and the next run's champion evaluation read back.

=============================  ===========================================================================
``model.joblib``               a scikit-learn estimator or pipeline, or the trainer's PyTorch MLP as:
``model.onnx``                 the MLP for serving: its ONNX export, input preprocessing included, with
                               its manifest in the model's metadata (below); what the model servers run
``model.pt`` + ``model.json``  the same MLP for PyTorch: its tensors (``torch.save``, tensors only) and the
                               manifest to rebuild the network from (``format`` names its version); what
                               the trainer reads back to evaluate a champion
``metrics.json``               the run's metrics on its held-out rows
``reference.csv``              a sample of the training features: the drift detector's reference
``reference_predictions.csv``  the model's predictions on those rows, one column ``prediction``
``holdout.csv``                the held-out rows the model was evaluated on (never trained on): their
                               features, then the true label (:data:`HOLDOUT_LABEL_COLUMN`), the model's
                               prediction (:data:`HOLDOUT_PREDICTION_COLUMN`) and, for a classifier, its
                               probability of each class (:func:`holdout_probability_column`, in the
                               order of the model's classes): what the drift detector calibrates its
                               estimate of the model's performance on, before labels arrive
``result.json``                the run's whole result
=============================  ===========================================================================

A folder holds one model: ``model.joblib``, or the MLP's three files, never both. A run's ``artifactUri``
names the model file a server loads (``model.joblib`` or ``model.onnx``), which is all that a server
needs: KServe's and Seldon's storage initializers fetch only the file that a URI names.

``model.onnx`` takes one input, :data:`ONNX_INPUT`: float32 rows ``[batch, features]``, NaN for a missing
value (the graph fills it with the training median, then standardizes). A classifier's outputs are
:data:`ONNX_CLASS_OUTPUT` (int64 ``[batch]``: the index in ``classes`` of the largest score, the first on
a tie) and :data:`ONNX_PROBABILITIES_OUTPUT` (float32 ``[batch, classes]``); a regressor's is
:data:`ONNX_VALUE_OUTPUT` (float64 ``[batch]``, in the target's units). The model's ``metadata_props``
hold, under :data:`ONNX_MANIFEST_KEY`, a JSON object: ``format`` (:data:`ONNX_FORMAT`), ``task``
(``classification`` or ``regression``), ``feature_names`` (the input's columns, in order) and, for a
classifier, ``classes`` (the labels, in the order of the class index).
"""

from __future__ import annotations

SKLEARN_MODEL_FILE = "model.joblib"
ONNX_MODEL_FILE = "model.onnx"
TORCH_MODEL_FILE = "model.pt"
TORCH_ARCHITECTURE_FILE = "model.json"
TORCH_ARCHITECTURE_FORMAT = "modelloop-torch-mlp/v1"
"""``model.json``'s ``format``: changed whenever the manifest or the tensors' names change."""
ONNX_FORMAT = "modelloop-mlp-onnx/v1"
"""The ``format`` of ``model.onnx``'s manifest: changed whenever the manifest, the input or the outputs
change."""
ONNX_MANIFEST_KEY = "modelloop"
"""The key of ``model.onnx``'s ``metadata_props`` that holds its manifest (JSON)."""
ONNX_INPUT = "features"
ONNX_CLASS_OUTPUT = "class_index"
ONNX_PROBABILITIES_OUTPUT = "probabilities"
ONNX_VALUE_OUTPUT = "value"
MODEL_FILES = (SKLEARN_MODEL_FILE, ONNX_MODEL_FILE, TORCH_MODEL_FILE)
"""The files an artifact URI may name as the model, in the order a reader of a folder looks for them."""
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.csv"
REFERENCE_PREDICTIONS_FILE = "reference_predictions.csv"
PREDICTION_COLUMN = "prediction"
"""The one column of ``reference_predictions.csv``."""
RESULT_FILE = "result.json"
HOLDOUT_FILE = "holdout.csv"
HOLDOUT_LABEL_COLUMN = "modelloop.label"
"""``holdout.csv``'s column of true labels (a prefix no training table's feature is expected to have)."""
HOLDOUT_PREDICTION_COLUMN = "modelloop.prediction"
"""``holdout.csv``'s column of the model's predictions (a class label, or a value for a regressor)."""
HOLDOUT_PROBABILITY_PREFIX = "modelloop.probability["
PROBABILITIES_KEY = "probabilities"
"""Where the model servers put a classifier's class probabilities beside its predictions, one list per row in
the order of the model's classes: the key of a V1 response (beside ``predictions``), the name of a V2
response's second output (shape ``[n, classes]``), and the key of a Seldon response's ``meta.tags``."""


def holdout_probability_column(label: object) -> str:
    """The ``holdout.csv`` column of the probability of class ``label``:
    ``modelloop.probability[<label>]``."""
    return f"{HOLDOUT_PROBABILITY_PREFIX}{label}]"


def holdout_probability_label(column: str) -> str | None:
    """The class label (as text) of a ``holdout.csv`` probability column; None for any other column."""
    if column.startswith(HOLDOUT_PROBABILITY_PREFIX) and column.endswith("]"):
        return column[len(HOLDOUT_PROBABILITY_PREFIX) : -1]
    return None
