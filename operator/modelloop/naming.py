"""Names, labels and owner references of the objects the operator creates — the one place for them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from modelloop import __version__
from modelloop.api import API_VERSION, GROUP

MANAGED_BY = "modelloop"
LABEL_TRAINING_RUN = f"{GROUP}/training-run"
LABEL_MODEL = f"{GROUP}/model"
LABEL_TRIAL = f"{GROUP}/trial"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# A user (or GitOps) asks for a ModelVersion's stage with this annotation, and may say why with the other.
ANNOTATION_REQUESTED_STAGE = f"{GROUP}/requested-stage"
ANNOTATION_STAGE_REASON = f"{GROUP}/stage-reason"
# Set by the API server (manifests/admission/registered-by.yaml) to the user that created a ModelVersion.
ANNOTATION_REGISTERED_BY = f"{GROUP}/registered-by"
ANNOTATION_RUN_UID = f"{GROUP}/training-run-uid"

# Kubernetes keeps these for itself or for us; a user's labels with these prefixes are not copied.
_RESERVED_PREFIXES = (f"{GROUP}/", "app.kubernetes.io/", "kubernetes.io/", "k8s.io/", "batch.kubernetes.io/")
_MAX_NAME = 63  # a Job's name becomes its pods' job-name label value


def job_name(run_name: str, run_uid: str, trial: int | None = None) -> str:
    """The name of a run's Job (or of one trial's Job): deterministic, a valid DNS label at any run length.

    The suffix hashes the run's uid, so that a run deleted and re-created under the same name never
    adopts a Job of its predecessor that is still being garbage-collected.
    """
    base = run_name if trial is None else f"{run_name}-t{trial}"
    digest = hashlib.sha256(f"{run_uid}/{trial}".encode()).hexdigest()[:6]
    room = _MAX_NAME - len(digest) - 1
    return f"{base[:room].rstrip('-.')}-{digest}"


def standard_labels(component: str, instance: str) -> dict[str, str]:
    """The app.kubernetes.io labels of an object the operator creates."""
    return {
        "app.kubernetes.io/name": "modelloop",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": _label_value(instance),
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }


def user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A user's labels that may be copied onto objects made for them (reserved prefixes left out)."""
    return {k: v for k, v in (labels or {}).items() if not k.startswith(_RESERVED_PREFIXES)}


def owner_reference(owner: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """An owner reference to one of our objects that makes it the controller: deleting the owner deletes
    the owned object (the garbage collector's foreground/background cascade)."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _label_value(value: str) -> str:
    """A label value (at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63]
    return cleaned.strip("-_.") or "x"
