"""modelloop's drift detector: KServe's logged inferences in, drift verdicts and feedback metrics out.

KServe's payload logger posts each request and response as a CloudEvent; the detector pairs them
by id, attributes the rows to the model version that answered, keeps a window of recent rows per
version and judges it against the version's reference sample with alibi-detect (KS, Chi-square,
MMD, and a prediction-distribution check). Ground-truth labels join the rows by request id; the
window can be exported, with its labels, as the next training table.
"""

from modelloop_contracts import Registration, VersionSpec

from modelloop_detector.detectors import DetectorSettings, Verdict, VersionDetectors
from modelloop_detector.events import DropReason, EventRejected, InferenceEvent, read_event
from modelloop_detector.export import export_csv
from modelloop_detector.payloads import PayloadError, parse_request, parse_response
from modelloop_detector.reference import Reference, ReferenceError, load_reference
from modelloop_detector.service import DriftService, WindowSettings
from modelloop_detector.tenancy import Tenancy
from modelloop_detector.version import DETECTOR_VERSION

__version__ = DETECTOR_VERSION

__all__ = [
    "DetectorSettings",
    "DriftService",
    "DropReason",
    "EventRejected",
    "InferenceEvent",
    "PayloadError",
    "Reference",
    "ReferenceError",
    "Registration",
    "Tenancy",
    "Verdict",
    "VersionDetectors",
    "VersionSpec",
    "WindowSettings",
    "__version__",
    "export_csv",
    "load_reference",
    "parse_request",
    "parse_response",
    "read_event",
]
