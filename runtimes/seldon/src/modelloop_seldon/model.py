"""The Seldon model: a modelloop artifact behind seldon-core's Python wrapper interface."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from modelloop_contracts import (
    PROBABILITIES_KEY,
    TERMINATION_LOG,
    ArtifactError,
    Predictor,
    load_predictor,
    write_termination_message,
)
from modelloop_contracts.loading import serve_probabilities, switch_value
from seldon_core.proto import prediction_pb2
from seldon_core.utils import construct_response_json, json_to_seldon_message, seldon_message_to_json

from modelloop_seldon.messages import (
    INTERNAL,
    MODEL_REJECTED,
    BadRequest,
    failure_message,
    features_from_message,
)
from modelloop_seldon.metrics import ServerMetrics

DEFAULT_MODEL_URI = "/mnt/models"  # where Seldon's storage initializer puts a graph's modelUri
VERSION_ENV = "MODELLOOP_MODEL_VERSION"
DIGEST_ENV = "MODELLOOP_ARTIFACT_DIGEST"  # the ModelVersion's artifact.digest, set by modelloop's operator
TERMINATION_LOG_ENV = "MODELLOOP_TERMINATION_LOG"
VERSION_TAG = "model_version"
"""The key of an answer's ``meta.tags`` that names the version that answered."""

logger = logging.getLogger(__name__)


def model_folder(model_uri: str) -> Path:
    """The local folder that ``model_uri`` names: a path, or a ``file://`` URI."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise ArtifactError(
            f"model_uri {model_uri!r} is not a local folder: give a path or a file:// URI "
            "(Seldon's storage initializer copies a graph's modelUri to /mnt/models)"
        )
    return Path(model_uri)


def load_artifact(folder: Path, expected_digest: str | None = None) -> Predictor:
    """The model in ``folder`` (``modelloop_contracts.load_predictor``: scikit-learn's ``model.joblib``
    or the trainer's MLP as ``model.onnx``), checked against ``expected_digest`` before it is loaded;
    :class:`~modelloop_contracts.ArtifactError` when it cannot be (a
    :class:`~modelloop_contracts.DigestMismatch` when it is not the file registered)."""
    return load_predictor(folder, expected_digest)


def _leave_termination_message(error: ArtifactError) -> None:
    """Where the kubelet made the container's termination-message file, say why the model was not loaded."""
    write_termination_message(
        f"modelloop_seldon: {error}", os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG
    )


def _probabilities_switch(value: bool | str | None) -> bool:
    if value is None:
        return serve_probabilities(os.environ)
    if isinstance(value, bool):
        return value
    return switch_value(str(value), "the parameter serve_probabilities")


class ModelloopModel:
    """Serves the modelloop artifact at ``model_uri`` and counts its answers under ``model_version``.

    seldon-core-microservice makes one in its main process from the graph's parameters
    (``PREDICTIVE_UNIT_PARAMETERS``), then calls :meth:`load` once in each worker process.
    ``model_version`` is the ``version`` label of the metrics: the parameter, else
    ``$MODELLOOP_MODEL_VERSION``, else ``unknown``. ``artifact_digest`` is the model file's expected digest
    (the ModelVersion's ``artifact.digest``): the parameter, else ``$MODELLOOP_ARTIFACT_DIGEST``, else none
    (no check). ``serve_probabilities`` says whether a classifier's answers carry its class probabilities
    (in ``meta.tags``, see :meth:`predict_raw`): the parameter (``BOOL``, or a ``STRING`` such as ``false``),
    else ``$MODELLOOP_SERVE_PROBABILITIES``, else true; ValueError, naming it, for a value that is neither.
    """

    def __init__(
        self,
        model_uri: str = DEFAULT_MODEL_URI,
        model_version: str | int | float | None = None,
        artifact_digest: str | None = None,
        serve_probabilities: bool | str | None = None,
    ) -> None:
        self.model_dir = model_folder(str(model_uri))
        version = os.environ.get(VERSION_ENV) if model_version is None else str(model_version)
        self.version = version or "unknown"
        self.expected_digest = (
            os.environ.get(DIGEST_ENV) if artifact_digest is None else artifact_digest
        ) or None
        self.serve_probabilities = _probabilities_switch(serve_probabilities)
        self.predictor: Predictor | None = None
        self.metrics = ServerMetrics(self.version, None)

    def load(self) -> None:
        """Load the artifact, once its digest is the expected one (where one is given); raises
        :class:`ArtifactError` when it cannot: the worker then fails to boot and the server exits, its
        reason in the log and in the container's termination message."""
        try:
            self.predictor = load_artifact(self.model_dir, self.expected_digest)
        except ArtifactError as exc:
            _leave_termination_message(exc)
            raise
        except Exception as exc:
            # seldon-core ignores an AttributeError from load(): none may escape as one.
            error = ArtifactError(f"cannot load {self.model_dir}: {type(exc).__name__}: {exc}")
            _leave_termination_message(error)
            raise error from exc
        self.metrics = ServerMetrics(self.version, self.predictor.classes)
        logger.info(
            "loaded the %s model in %s (version %s, %s; %s, %s)",
            self.predictor.framework,
            self.model_dir,
            self.version,
            "regressor" if self.predictor.classes is None else f"classes {list(self.predictor.classes)}",
            self.predictor.digest,
            "the digest expected" if self.expected_digest else "no digest was given to check it against",
        )

    def predict_raw(self, request: Any) -> Any:
        """Answer one prediction request: a SeldonMessage as JSON (REST) or as protobuf (gRPC).

        A prediction's ``meta.tags`` (beside the request's own tags) carry ``model_version``, the version
        that answered, and for a classifier with probabilities (unless they are turned off)
        ``probabilities``: one list per row, in the order of the model's classes. Seldon's payload logger
        logs the whole answer, so the drift detector gets both. The answer carries its metrics in
        ``meta.metrics``, and a failure carries its HTTP status in ``status.code``: 400 for a request the
        model cannot take, 500 for the server's own faults.
        """
        if isinstance(request, prediction_pb2.SeldonMessage):
            answer = self._answer(seldon_message_to_json(request))
            # seldon-core reads a gRPC answer's metrics back through protobuf's JSON, which leaves
            # out a 0 value and then fails on it: the series declared at 0 are REST's only.
            meta = answer["meta"]
            meta["metrics"] = [metric for metric in meta.get("metrics", []) if metric["value"]]
            return json_to_seldon_message(answer)
        return self._answer(request)

    def _answer(self, request: Any) -> dict[str, Any]:
        try:
            predictor = self.predictor
            if predictor is None:
                raise RuntimeError(f"the model in {self.model_dir} is not loaded")
            rows = features_from_message(request, predictor.feature_names, predictor.n_features)
            probabilities = None
            try:
                if self.serve_probabilities:
                    predictions, probabilities = predictor.predict_with_probabilities(rows)
                else:
                    predictions = predictor.predict(rows)
            except ValueError as exc:
                # scikit-learn and numpy say ValueError for rows the model cannot take (NaN without
                # an imputer, infinities): the client's to fix, in the model's own words.
                raise BadRequest(f"the model cannot predict these rows: {exc}", MODEL_REJECTED) from None
            metrics = self.metrics.for_predictions(predictions)
            tags: dict[str, Any] = {VERSION_TAG: self.version}
            if probabilities is not None:
                tags[PROBABILITIES_KEY] = probabilities.tolist()
            response: dict[str, Any] = construct_response_json(
                self, False, request, predictions, request.get("meta"), metrics, tags
            )
            return response
        except BadRequest as error:
            return failure_message(
                error.message, 400, error.reason, self.metrics.for_failure(400, error.reason)
            )
        except Exception as exc:
            logger.exception("failed to answer a prediction request")
            return failure_message(
                f"the server failed: {type(exc).__name__}: {exc}",
                500,
                INTERNAL,
                self.metrics.for_failure(500, INTERNAL),
            )
