"""The drift detector's HTTP API as its clients and the detector itself read and write it: what a
registration says is served, what an export asks for, and what an export answers.

========================================  ==========================  =====================
``PUT /v1/services/{namespace}/{name}``   :class:`Registration`
``POST /v1/export/{namespace}/{name}``    :class:`ExportRequest`      :class:`ExportedDataset`
========================================  ==========================  =====================

Each type reads its JSON body (``from_json``, :class:`InvalidMessage` saying what is wrong) and writes it
(``to_json``), field names in the API's camelCase.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ENDPOINT = "default"
"""The endpoint of a KServe InferenceService that serves its stable version; the canary's is ``canary``."""
ENDPOINTS = (DEFAULT_ENDPOINT, "canary")


class InvalidMessage(ValueError):
    """A body that does not say what the API needs; the message says what is wrong."""


@dataclass(frozen=True)
class VersionSpec:
    """One served version: where its reference sample (and the model's predictions on it) are, which
    endpoint serves it, and where its held-out rows with labels, predictions and probabilities are (the
    trainer's ``holdout.csv``: what the detector estimates the version's performance from, before labels
    arrive)."""

    reference_uri: str
    predictions_uri: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    holdout_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The version's entry of a registration's ``versions``."""
        body = {"referenceUri": self.reference_uri, "endpoint": self.endpoint}
        if self.predictions_uri is not None:
            body["predictionsUri"] = self.predictions_uri
        if self.holdout_uri is not None:
            body["holdoutUri"] = self.holdout_uri
        return body


@dataclass(frozen=True)
class Registration:
    """What a service serves: its model, its versions by name, and how to read their reference samples."""

    model: str
    versions: Mapping[str, VersionSpec]
    target_column: str | None = None
    """The label column, dropped from the reference where the sample has it."""
    categorical: tuple[str, ...] = ()
    """The features compared as categories, not as numbers."""
    mmd: bool | None = None
    """Whether the versions also get the MMD detector (PyTorch; heavy): None leaves it to the detector's
    own setting. The operator asks for it where a DriftPolicy's metrics read ``detector="mmd"``."""

    @classmethod
    def from_json(cls, body: Any) -> Registration:
        """A registration's body; :class:`InvalidMessage` when it lacks what is needed."""
        if not isinstance(body, dict):
            raise InvalidMessage("the body must be a JSON object with 'model' and 'versions'")
        model, versions = body.get("model"), body.get("versions")
        if not isinstance(model, str) or not model:
            raise InvalidMessage("'model' must be the model's name")
        if not isinstance(versions, dict):
            raise InvalidMessage("'versions' must map each served version to its referenceUri and endpoint")
        target = body.get("targetColumn")
        if target is not None and not isinstance(target, str):
            raise InvalidMessage("'targetColumn' must be a column name")
        categorical = body.get("categorical", [])
        if not isinstance(categorical, list) or not all(isinstance(name, str) for name in categorical):
            raise InvalidMessage("'categorical' must be a list of column names")
        mmd = body.get("mmd")
        if mmd is not None and not isinstance(mmd, bool):
            raise InvalidMessage("'mmd' must be true or false: whether the versions get MMD")
        return cls(
            model=model,
            versions={str(name): _version_spec(name, spec) for name, spec in versions.items()},
            target_column=target,
            categorical=tuple(categorical),
            mmd=mmd,
        )

    def to_json(self) -> dict[str, Any]:
        """The registration's body."""
        body: dict[str, Any] = {
            "model": self.model,
            "versions": {name: spec.to_json() for name, spec in self.versions.items()},
        }
        if self.target_column is not None:
            body["targetColumn"] = self.target_column
        if self.categorical:
            body["categorical"] = list(self.categorical)
        if self.mmd is not None:
            body["mmd"] = self.mmd
        return body


@dataclass(frozen=True)
class ExportRequest:
    """Write the window's rows (one version's, or every version's), with their labels, under
    ``uri_prefix``."""

    uri_prefix: str
    version: str | None = None
    target_column: str | None = None
    """The label column's name in the table; the registration's, else ``target``."""

    @classmethod
    def from_json(cls, body: Any) -> ExportRequest:
        """An export's body; :class:`InvalidMessage` when it names no ``uriPrefix``."""
        if not isinstance(body, dict) or not isinstance(body.get("uriPrefix"), str):
            raise InvalidMessage("the body must name a 'uriPrefix' (file://..., s3://...)")
        version, target = body.get("version"), body.get("targetColumn")
        return cls(
            uri_prefix=body["uriPrefix"],
            version=None if version is None else str(version),
            target_column=None if target is None else str(target),
        )

    def to_json(self) -> dict[str, Any]:
        """The export's body."""
        body = {"uriPrefix": self.uri_prefix}
        if self.version is not None:
            body["version"] = self.version
        if self.target_column is not None:
            body["targetColumn"] = self.target_column
        return body


@dataclass(frozen=True)
class ExportedDataset:
    """A table an export wrote: where, its content hash (:func:`~modelloop_contracts.dataset_hash`, as the
    trainer computes it on reading the file), its rows and how many of them have a label."""

    uri: str
    hash: str
    rows: int
    labelled: int

    @classmethod
    def from_json(cls, body: Any) -> ExportedDataset:
        """An export's answer; :class:`InvalidMessage` when it lacks a field."""
        try:
            return cls(str(body["uri"]), str(body["hash"]), int(body["rows"]), int(body.get("labelled", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidMessage(f"the export's answer lacks {error}: {body!r:.200}") from None

    def to_json(self) -> dict[str, Any]:
        """The export's answer."""
        return {"uri": self.uri, "hash": self.hash, "rows": self.rows, "labelled": self.labelled}


def _version_spec(name: Any, spec: Any) -> VersionSpec:
    if not isinstance(spec, dict) or not isinstance(spec.get("referenceUri"), str):
        raise InvalidMessage(f"version {name!r} needs a 'referenceUri'")
    predictions = spec.get("predictionsUri")
    if predictions is not None and not isinstance(predictions, str):
        raise InvalidMessage(f"version {name!r}: 'predictionsUri' must be a URI")
    holdout = spec.get("holdoutUri")
    if holdout is not None and not isinstance(holdout, str):
        raise InvalidMessage(f"version {name!r}: 'holdoutUri' must be a URI")
    endpoint = spec.get("endpoint", DEFAULT_ENDPOINT)
    if endpoint not in ENDPOINTS:
        raise InvalidMessage(f"version {name!r}: 'endpoint' must be 'default' or 'canary', not {endpoint!r}")
    return VersionSpec(spec["referenceUri"], predictions or None, endpoint, holdout or None)
