"""modelloop's model server: KServe's ModelServer for the artifacts the trainer writes.

It loads ``model.joblib`` (scikit-learn) or ``model.onnx`` (the trainer's PyTorch MLP, run with
onnxruntime), answers KServe's V1 and V2 protocols, and adds Prometheus metrics labelled with the
model's name and version: requests by status code, latency, and the distribution of the predictions.
"""

from modelloop_contracts import ArtifactError, Predictor

from modelloop_server.metrics import RequestMetricsMiddleware, ServerMetrics
from modelloop_server.model import ModelloopModel, load_artifact
from modelloop_server.version import SERVER_VERSION

__version__ = SERVER_VERSION

__all__ = [
    "ArtifactError",
    "ModelloopModel",
    "Predictor",
    "RequestMetricsMiddleware",
    "ServerMetrics",
    "__version__",
    "load_artifact",
]
