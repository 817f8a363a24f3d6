"""The KServe model: a modelloop artifact behind KServe's ``load``/``predict`` interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InferenceError, InvalidInput
from modelloop_contracts import Predictor, load_predictor

from modelloop_server.metrics import ServerMetrics
from modelloop_server.payloads import Payload, features_from_request, prediction_response


def load_artifact(model_dir: Path, expected_digest: str | None = None) -> Predictor:
    """The model in ``model_dir`` (``modelloop_contracts.load_predictor``: scikit-learn's ``model.joblib``
    or the trainer's MLP as ``model.onnx``), checked against ``expected_digest`` before it is loaded;
    :class:`~modelloop_contracts.ArtifactError` when it cannot be (a
    :class:`~modelloop_contracts.DigestMismatch` when it is not the file registered)."""
    return load_predictor(model_dir, expected_digest)


class ModelloopModel(kserve.Model):  # type: ignore[misc]
    """Serves the artifact in ``model_dir`` under ``name`` and counts its predictions in ``metrics``.

    With ``serve_probabilities`` (the default), a classifier that has class probabilities answers them
    beside its predictions (see :func:`~modelloop_server.payloads.prediction_response`), from the same model
    call where the model allows it: what the drift detector estimates the model's accuracy from.

    ``predict`` is synchronous on purpose: KServe then runs it on the event loop itself, which
    for a model that answers in well under a millisecond is cheaper than a hop to a thread pool.
    """

    def __init__(
        self,
        name: str,
        model_dir: Path,
        version: str,
        metrics: ServerMetrics,
        expected_digest: str | None = None,
        serve_probabilities: bool = True,
    ) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.version = version
        self.metrics = metrics
        self.expected_digest = expected_digest
        self.serve_probabilities = serve_probabilities
        self.predictor: Predictor | None = None
        self.ready = False

    def load(self) -> bool:
        """Load the artifact (once its digest is the expected one, where one is given); raises
        :class:`~modelloop_contracts.ArtifactError` when it cannot, and is then not ready."""
        self.predictor = load_artifact(self.model_dir, self.expected_digest)
        if self.predictor.classes is not None:
            self.metrics.declare_classes(self.predictor.classes)
        self.ready = True
        return self.ready

    def predict(self, payload: Payload, headers: dict[str, str] | None = None) -> Any:
        """Predict the request's rows: V1 answers ``{"predictions": [...]}`` (and a classifier's
        ``"probabilities"``), V2 an InferResponse."""
        predictor = self.predictor
        if predictor is None:
            raise InferenceError(f"model {self.name} is not loaded")
        features = features_from_request(payload, predictor.feature_names, predictor.n_features)
        probabilities = None
        try:
            if self.serve_probabilities:
                predictions, probabilities = predictor.predict_with_probabilities(features)
            else:
                predictions = predictor.predict(features)
        except ValueError as exc:
            # scikit-learn and numpy say ValueError for inputs the model cannot take (NaN without an
            # imputer, infinities): the client's to fix, so a 400 with the model's own words.
            raise InvalidInput(f"the model cannot predict these rows: {exc}") from None
        if predictor.classes is None:
            self.metrics.observe_values(predictions)
        else:
            self.metrics.observe_classes(predictions)
        return prediction_response(payload, predictions, self.name, self.version, probabilities)
