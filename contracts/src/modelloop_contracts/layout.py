"""The artifact folder: the files the trainer writes for one run, which the model servers, the drift
detector and the next run's champion evaluation read back.

=============================  ===========================================================================
``model.joblib``               a scikit-learn estimator or pipeline, or:
``model.pt`` + ``model.json``  the trainer's PyTorch MLP: its tensors (``torch.save``, tensors only) and the
                               manifest to rebuild the network from (``format`` names its version)
``metrics.json``               the run's metrics on its held-out rows
``reference.csv``              a sample of the training features: the drift detector's reference
``reference_predictions.csv``  the model's predictions on those rows, one column ``prediction``
``result.json``                the run's whole result
=============================  ===========================================================================

A folder holds one model: ``model.joblib`` or ``model.pt``, never both.
"""

from __future__ import annotations

SKLEARN_MODEL_FILE = "model.joblib"
TORCH_MODEL_FILE = "model.pt"
TORCH_ARCHITECTURE_FILE = "model.json"
TORCH_ARCHITECTURE_FORMAT = "modelloop-torch-mlp/v1"
"""``model.json``'s ``format``: changed whenever the manifest or the tensors' names change."""
MODEL_FILES = (SKLEARN_MODEL_FILE, TORCH_MODEL_FILE)
"""The model files a folder may hold (one of them), in the order a reader looks for them."""
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference.csv"
REFERENCE_PREDICTIONS_FILE = "reference_predictions.csv"
PREDICTION_COLUMN = "prediction"
"""The one column of ``reference_predictions.csv``."""
RESULT_FILE = "result.json"
