"""modelloop's Seldon Core v1 model server: a seldon-core 1.17.1 wrapper class for the trainer's artifacts.

``seldon-core-microservice modelloop_seldon.ModelloopModel`` loads ``model.joblib`` (scikit-learn)
or ``model.onnx`` (the trainer's PyTorch MLP, run with onnxruntime), answers Seldon's prediction protocol,
and counts requests, errors and predictions, labelled with the model's version, in Seldon's metrics.
"""

from modelloop_contracts import ArtifactError, Predictor

from modelloop_seldon.metrics import ServerMetrics
from modelloop_seldon.model import ModelloopModel, load_artifact

__version__ = "0.1.0"

__all__ = ["ArtifactError", "ModelloopModel", "Predictor", "ServerMetrics", "__version__", "load_artifact"]
