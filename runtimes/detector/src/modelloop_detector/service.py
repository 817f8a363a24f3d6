"""The drift detector's state: registered services and versions, their windows, labels and verdicts.

:class:`DriftService` is what the HTTP API calls. Ingestion (:meth:`DriftService.ingest`) only
parses, pairs and appends rows to a window; verdicts are computed by :mod:`evaluation`'s threads,
which take a copy of a window (:meth:`DriftService.judge`) and never hold a lock while judging.
What a registration says is served is ``modelloop_contracts``' :class:`~modelloop_contracts.Registration`,
the type the detector's clients write. Everything a caller can make it hold is bounded by
:class:`~modelloop_detector.limits.Limits`, references are read only under its
:class:`~modelloop_detector.artifacts.ArtifactRoots`, and a detector set to one namespace
(:class:`~modelloop_detector.tenancy.Tenancy`) refuses anything that names another before storing it.

A version registered with a holdout (the trainer's ``holdout.csv``, its ``holdoutUri``) gets a
:class:`~modelloop_detector.estimation.PerformanceEstimator` calibrated on it: the fast evaluation loop
estimates the version's performance from its window's class probabilities before any label arrives, and
measures it (realised performance) on the window's rows whose labels have arrived. A holdout that cannot be
used leaves the version registered without estimation (:class:`Estimation` says why): its drift is judged
all the same.

A version's window starts empty when it is registered, in particular when a restarted detector is told
again what is served: until it has collected a full window (``window_rows`` rows, or ``window_seconds``
of rows and at least ``min_rows``), its verdicts are *inconclusive* (:attr:`VersionState.complete`),
which its answers and metrics say, so that a restart never passes silently for "no drift".
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np
from modelloop_contracts import Registration, VersionSpec

from modelloop_detector.artifacts import DEFAULT_ROOTS, ArtifactRoots
from modelloop_detector.detectors import DetectorSettings, Verdict, VersionDetectors
from modelloop_detector.estimation import (
    Estimate,
    PerformanceEstimator,
    build_estimator,
    load_holdout,
    realised_performance,
)
from modelloop_detector.events import DropReason, EventRejected, InferenceEvent
from modelloop_detector.feedback import FeedbackScore, LabelBook
from modelloop_detector.limits import (
    DNS_LABEL,
    NAME,
    Limits,
    RefusalReason,
    Refused,
    check_name,
)
from modelloop_detector.pairing import Pairing
from modelloop_detector.payloads import (
    CategoryCodes,
    FloatArray,
    ObjectArray,
    OnePrediction,
    PayloadError,
    ProbabilitiesIgnored,
    ResponsePredictions,
    one_prediction,
    parse_request,
    parse_response,
    request_row,
)
from modelloop_detector.reference import Reference, ReferenceError, load_reference
from modelloop_detector.seldon import (
    parse_seldon_request,
    parse_seldon_response,
    seldon_one_prediction,
    seldon_request_row,
)
from modelloop_detector.tenancy import Tenancy
from modelloop_detector.window import RowWindow, WindowRows, WindowSnapshot

logger = logging.getLogger(__name__)

LoopKind = Literal["fast", "mmd"]
# A label waits for its row this many windows' time at most.
PENDING_LABEL_WINDOWS = 6


@dataclass(frozen=True)
class WindowSettings:
    """How rows are kept and how often they are judged."""

    window_rows: int = 1000
    window_seconds: float = 600.0
    evaluate_every_rows: int = 100
    evaluate_every_seconds: float = 5.0
    min_verdict_seconds: float = 1.0
    min_rows: int = 50
    feedback_window: int = 500

    @property
    def max_ids(self) -> int:
        """How many row ids and labels a service remembers."""
        return 10 * max(self.window_rows, self.feedback_window)


class UnknownService(LookupError):
    """A service that is not registered (HTTP 404)."""


class NothingToExport(LookupError):
    """A window with no rows to export (HTTP 409)."""


@dataclass
class EvaluationMark:
    """Where one evaluation loop last judged a version."""

    changes: int = -1
    appended: int = 0
    time: float = float("-inf")


@dataclass(frozen=True)
class Estimation:
    """How a version's performance is estimated before labels arrive: the estimator calibrated on its
    holdout, or, where the holdout could not be used, why not (``error``; the version is registered and
    its drift judged all the same)."""

    holdout_uri: str
    estimator: PerformanceEstimator | None = None
    holdout_rows: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Realised:
    """A version's performance measured on its window's labelled rows (the estimate's metrics)."""

    values: dict[str, float]
    rows: int
    time: float


@dataclass
class VersionState:
    """One version's reference, detectors, window, feedback, last verdicts and performance estimates."""

    name: str
    endpoint: str
    cache_key: tuple[Any, ...]
    reference: Reference
    detectors: VersionDetectors
    prediction_codes: CategoryCodes | None
    window: RowWindow
    feedback: FeedbackScore
    collecting_since: float = 0.0
    """When this window started (the version's registration in this process)."""
    complete: bool = False
    """Whether the window has been full once since: before, its verdicts are inconclusive."""
    appended: int = 0
    row_width: int = field(init=False)
    """How many numbers a request's row read without numpy has for this version: its features', 0 when
    it has categorical ones (their values need the reference's codes)."""
    # The evaluation loops were told that this window is due and have not judged it since: ingestion
    # tells them once, not at every row.
    woken: bool = False
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    estimation: Estimation | None = None
    """None: registered without a holdout."""
    estimates: tuple[Estimate, ...] = ()
    estimated_at: float | None = None
    realised: Realised | None = None
    marks: dict[LoopKind, EvaluationMark] = field(
        default_factory=lambda: {"fast": EvaluationMark(), "mmd": EvaluationMark()}
    )

    def __post_init__(self) -> None:
        self.row_width = 0 if self.reference.categorical else self.reference.width

    def update_complete(self, now: float, settings: WindowSettings) -> bool:
        """Mark the window complete once it has held ``window_rows`` rows, or has spanned
        ``window_seconds`` with ``min_rows``; returns :attr:`complete`."""
        if not self.complete:
            rows = len(self.window)
            self.complete = rows >= settings.window_rows or (
                rows >= settings.min_rows and now - self.collecting_since >= settings.window_seconds
            )
        return self.complete

    def encode_predictions(self, values: ObjectArray) -> FloatArray:
        """Predictions as the prediction check compares them: class codes, or values (NaN if not numbers)."""
        if self.prediction_codes is not None:
            return self.prediction_codes.encode(values)
        try:
            return values.astype(np.float64)
        except (TypeError, ValueError):
            return np.full(len(values), np.nan)

    def encode_prediction(self, value: Any) -> float:
        """One prediction as :meth:`encode_predictions` encodes it (numpy's cast of an object to a float is
        ``float()``, but for None, which it makes NaN as this does)."""
        if self.prediction_codes is not None:
            return self.prediction_codes.code(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            return np.nan


@dataclass
class ServiceState:
    """One registered InferenceService."""

    namespace: str
    name: str
    model: str
    target_column: str | None
    categorical: tuple[str, ...]
    labels: LabelBook
    versions: dict[str, VersionState] = field(default_factory=dict)
    # Row id -> (version, prediction) of recent rows, to join labels that arrive later.
    row_index: OrderedDict[str, tuple[str, Any]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def version_for(self, model_version: str | None, endpoint: str) -> VersionState | None:
        """The version a response names, else the one registered for the endpoint that answered."""
        if model_version is not None:
            return self.versions.get(model_version)
        for version in self.versions.values():
            if version.endpoint == endpoint:
                return version
        return None


class PendingRequest(NamedTuple):
    """A parsed request waiting for its response: its ``rows`` rows laid out for each version they fit
    (an ``(n, width)`` array; for a request of one row read without numpy, its numbers packed as the
    version's window keeps them, :attr:`~modelloop_detector.window.RowWindow.pack_row`)."""

    event: InferenceEvent
    rows: int
    matrices: dict[str, FloatArray | bytes]
    errors: Mapping[str, str]


class PendingResponse(NamedTuple):
    """A parsed response waiting for its request (a response of one prediction read without numpy: a
    :class:`OnePrediction`)."""

    event: InferenceEvent
    predictions: ResponsePredictions | OnePrediction


@dataclass(frozen=True)
class RegistrationResult:
    """What a registration loaded, the versions whose reference could not be used, and how the versions
    that named a holdout are estimated (or why they are not)."""

    versions: dict[str, Reference]
    errors: dict[str, str]
    estimation: dict[str, Estimation] = field(default_factory=dict)


@dataclass(frozen=True)
class Export:
    """A window's rows as a table, ready to be written."""

    features: tuple[str, ...]
    target_column: str
    columns: dict[str, list[Any]]
    rows: int
    labelled: int


Clock = Callable[[], float]
DropCounter = Callable[[DropReason, int], None]
RefusalCounter = Callable[[RefusalReason], None]
IgnoredCounter = Callable[[ProbabilitiesIgnored], None]


class DriftService:
    """Every registered service's state. Thread-safe: ingestion, registration and the evaluation
    threads may call it at once."""

    def __init__(
        self,
        window: WindowSettings,
        detectors: DetectorSettings,
        *,
        clock: Clock = time.time,
        on_drop: DropCounter | None = None,
        on_refuse: RefusalCounter | None = None,
        on_ignore: IgnoredCounter | None = None,
        limits: Limits | None = None,
        roots: ArtifactRoots | None = None,
        tenancy: Tenancy | None = None,
    ) -> None:
        self.window_settings = window
        self.detector_settings = detectors
        self.limits = limits or Limits()
        self.roots = roots or ArtifactRoots(DEFAULT_ROOTS)
        self.tenancy = tenancy or Tenancy()
        self.clock = clock
        self._on_drop = on_drop or (lambda reason, count: None)
        self._on_refuse = on_refuse or (lambda reason: None)
        self._on_ignore = on_ignore or (lambda reason: None)
        self._services: dict[tuple[str, str], ServiceState] = {}
        self._registry_lock = threading.Lock()
        self._pairing: Pairing[PendingRequest | PendingResponse] = Pairing(
            max_seconds=window.window_seconds,
            max_waiting=min(10 * window.window_rows, self.limits.max_pending_halves),
            max_bytes=self.limits.max_pending_bytes,
        )
        self._pairing_lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []
        self._max_ids = window.max_ids

    def check_namespace(self, namespace: str) -> None:
        """Refuse (:class:`Refused`, 403) a namespace this detector does not serve. Every method that
        takes a namespace calls it first; the HTTP layer calls it before parsing a body."""
        self.tenancy.check(namespace)

    # --- registration ----------------------------------------------------------------------------

    def check_registration(self, namespace: str, name: str, registration: Registration) -> Registration:
        """Refuse (:class:`Refused`) a registration that a limit does not allow or that names a file
        outside the artifact roots; the registration with its URIs normalised otherwise. Fast: it reads
        nothing, so that the HTTP layer can call it before going off the event loop."""
        self.check_namespace(namespace)
        limits = self.limits
        check_name("namespace", namespace, DNS_LABEL, limits.max_name_length)
        check_name("service", name, DNS_LABEL, limits.max_name_length)
        check_name("model", registration.model, NAME, limits.max_model_length)
        if len(registration.versions) > limits.max_versions:
            raise Refused(
                RefusalReason.TOO_MANY_VERSIONS,
                f"versions lists {len(registration.versions)} versions; at most {limits.max_versions} "
                "(MODELLOOP_DETECTOR_MAX_VERSIONS)",
            )
        if len(registration.categorical) > limits.max_features:
            raise Refused(
                RefusalReason.TOO_MANY_FEATURES,
                f"categorical lists {len(registration.categorical)} columns; at most {limits.max_features}",
            )
        for column in (registration.target_column or "", *registration.categorical):
            if len(column) > limits.max_feature_name_length:
                raise Refused(
                    RefusalReason.INVALID_NAME,
                    f"a column name in targetColumn/categorical is longer than "
                    f"{limits.max_feature_name_length} characters",
                )
        versions: dict[str, VersionSpec] = {}
        for version_name, spec in registration.versions.items():
            check_name("a version's name", version_name, NAME, limits.max_name_length)
            check_name(f"versions.{version_name}.endpoint", spec.endpoint, NAME, limits.max_name_length)
            reference = self.roots.check(f"versions.{version_name}.referenceUri", spec.reference_uri)
            predictions = (
                self.roots.check(f"versions.{version_name}.predictionsUri", spec.predictions_uri)
                if spec.predictions_uri
                else None
            )
            holdout = (
                self.roots.check(f"versions.{version_name}.holdoutUri", spec.holdout_uri)
                if spec.holdout_uri
                else None
            )
            versions[version_name] = VersionSpec(reference, predictions, spec.endpoint, holdout)
        with self._registry_lock:
            self._check_room(namespace, name)
        return Registration(
            model=registration.model,
            versions=versions,
            target_column=registration.target_column,
            categorical=registration.categorical,
        )

    def _check_room(self, namespace: str, name: str) -> None:
        # The caller holds the registry lock.
        if (namespace, name) not in self._services and len(self._services) >= self.limits.max_services:
            raise Refused(
                RefusalReason.TOO_MANY_SERVICES,
                f"this detector already watches {len(self._services)} services, its limit "
                "(MODELLOOP_DETECTOR_MAX_SERVICES); DELETE one, or run a detector per namespace",
                429,
            )

    def register(
        self, namespace: str, name: str, registration: Registration, *, mmd: bool | None = None
    ) -> RegistrationResult:
        """Register (or update) a service; slow (it reads references and builds detectors), so
        it runs off the event loop. Versions no longer listed are forgotten. ``mmd`` says whether
        its versions get the MMD detector (None: the detector's default). A registration that a limit
        refuses, or that names a file outside the artifact roots, raises :class:`Refused`."""
        registration = self.check_registration(namespace, name, registration)
        with self._registry_lock:
            existing = self._services.get((namespace, name))
        current = dict(existing.versions) if existing else {}
        built: dict[str, VersionState] = {}
        errors: dict[str, str] = {}
        wants_mmd = self.detector_settings.mmd if mmd is None else mmd
        for version_name, spec in registration.versions.items():
            key = (
                spec.reference_uri,
                spec.predictions_uri,
                spec.holdout_uri,
                registration.categorical,
                registration.target_column,
                wants_mmd,
            )
            previous = current.get(version_name)
            if previous is not None and previous.cache_key == key:
                previous.endpoint = spec.endpoint
                built[version_name] = previous
                continue
            try:
                built[version_name] = self._build_version(version_name, spec, registration, key, wants_mmd)
            except ReferenceError as exc:
                errors[version_name] = str(exc)
                if exc.reason is not None:
                    self._on_refuse(exc.reason)
        with self._registry_lock:
            state = self._services.get((namespace, name))
            if state is None:
                self._check_room(namespace, name)
                state = ServiceState(
                    namespace=namespace,
                    name=name,
                    model=registration.model,
                    target_column=registration.target_column,
                    categorical=registration.categorical,
                    labels=LabelBook(
                        max_labels=self.window_settings.max_ids,
                        pending_seconds=PENDING_LABEL_WINDOWS * self.window_settings.window_seconds,
                    ),
                )
                self._services[(namespace, name)] = state
            with state.lock:
                state.model = registration.model
                state.target_column = registration.target_column
                state.categorical = registration.categorical
                state.versions = built
        for version_name in current.keys() - built.keys():
            logger.info("%s/%s: version %s is no longer served; forgotten", namespace, name, version_name)
        return RegistrationResult(
            {key: version.reference for key, version in built.items()},
            errors,
            {key: version.estimation for key, version in built.items() if version.estimation is not None},
        )

    def _build_version(
        self, name: str, spec: VersionSpec, registration: Registration, key: tuple[Any, ...], mmd: bool
    ) -> VersionState:
        reference = load_reference(
            spec.reference_uri,
            categorical=registration.categorical,
            target_column=registration.target_column,
            predictions_uri=spec.predictions_uri,
            limits=self.limits,
        )
        prediction_codes = None
        if reference.task == "classification":
            assert reference.predictions is not None
            prediction_codes = CategoryCodes(list(dict.fromkeys(reference.predictions.tolist())))
        detectors = VersionDetectors(reference, self.detector_settings, prediction_codes, mmd=mmd)
        estimation = None if spec.holdout_uri is None else self._build_estimation(spec.holdout_uri, reference)
        estimator = None if estimation is None else estimation.estimator
        classes = len(estimator.classes) if estimator is not None and estimator.classes else 0
        settings = self.window_settings
        return VersionState(
            name=name,
            endpoint=spec.endpoint,
            cache_key=key,
            reference=reference,
            detectors=detectors,
            prediction_codes=prediction_codes,
            window=RowWindow(
                reference.width,
                max_rows=settings.window_rows,
                max_seconds=settings.window_seconds,
                classes=classes,
            ),
            feedback=FeedbackScore(settings.feedback_window, reference.task),
            collecting_since=self.clock(),
            estimation=estimation,
        )

    def _build_estimation(self, uri: str, reference: Reference) -> Estimation:
        """The estimator calibrated on the holdout at ``uri``, or why there is none: a holdout that cannot
        be used costs the version its estimates, not its registration."""
        try:
            holdout = load_holdout(uri, reference, limits=self.limits)
            estimator = build_estimator(holdout, min_rows=self.window_settings.min_rows)
        except ValueError as exc:  # ReferenceError, and a holdout the estimator cannot calibrate on
            if isinstance(exc, ReferenceError) and exc.reason is not None:
                self._on_refuse(exc.reason)
            logger.warning("holdout %s cannot be used, no performance estimates: %s", uri, exc)
            return Estimation(uri, error=str(exc))
        except Exception:
            logger.exception("building the performance estimator of holdout %s failed", uri)
            return Estimation(
                uri, error=f"no estimator could be built from {uri} (the detector's log says why)"
            )
        return Estimation(uri, estimator, holdout.rows)

    def unregister(self, namespace: str, name: str) -> bool:
        """Forget a service; whether it was registered."""
        self.check_namespace(namespace)
        with self._registry_lock:
            return self._services.pop((namespace, name), None) is not None

    def service(self, namespace: str, name: str) -> ServiceState:
        """A registered service, or :class:`UnknownService`."""
        self.check_namespace(namespace)
        with self._registry_lock:
            state = self._services.get((namespace, name))
        if state is None:
            raise UnknownService(f"service {namespace}/{name} is not registered")
        return state

    def services(self) -> list[ServiceState]:
        """Every registered service."""
        with self._registry_lock:
            return list(self._services.values())

    # --- ingestion -------------------------------------------------------------------------------

    def pending(self) -> tuple[int, int]:
        """Unpaired halves waiting, and their bodies' bytes."""
        with self._pairing_lock:
            return len(self._pairing), self._pairing.bytes

    def ingest(self, event: InferenceEvent, size: int = 0) -> int:
        """Take one logged request or response (``size``: its body's bytes); returns how many rows it
        completed (0 while its other half is awaited, or when it was dropped). Malformed bodies raise
        :class:`EventRejected`; an event of a namespace this detector does not serve, or with an id longer
        than the limit, :class:`Refused`, before anything of it is kept."""
        tenancy = self.tenancy
        if tenancy.namespace:
            tenancy.check(event.namespace)
        if len(event.id) > self.limits.max_id_length:
            raise Refused(
                RefusalReason.ID_TOO_LONG,
                f"the event's id is {len(event.id)} characters long; at most {self.limits.max_id_length} "
                "(MODELLOOP_DETECTOR_MAX_ID_LENGTH)",
            )
        state = self._services.get((event.namespace, event.service))
        if state is None:
            self._on_drop(DropReason.UNKNOWN_SERVICE, 1)
            return 0
        half: PendingRequest | PendingResponse
        try:
            if event.kind == "request":
                rows = _one_row(state, event)
                if rows is None:
                    half = self._read_request(state, event)
                else:
                    half = _new(PendingRequest, (event, 1, rows, _NO_ERRORS))
            else:
                predictions = _read_response(event)
                half = _new(PendingResponse, (event, predictions))
                if predictions.ignored is not None:
                    self._on_ignore(predictions.ignored)
        except PayloadError as exc:
            raise EventRejected(DropReason.INVALID_PAYLOAD, f"{event.kind} {event.id}: {exc}") from None
        now = self.clock()
        # The endpoint too: Seldon's shadow predictor logs the same request id as the one it mirrors
        # where the caller set the puid (KServe logs a request and its response from one endpoint).
        key = (event.namespace, event.service, event.endpoint, event.id)
        with self._pairing_lock:
            other, expired = self._pairing.offer(key, half, now, size)
            if other is not None and other.event.kind == event.kind:
                # A repeated id: the earlier half can no longer be paired.
                expired.append(other)
                other, more = self._pairing.offer(key, half, now, size)
                expired.extend(more)
        if expired:
            self._on_drop(DropReason.UNPAIRED, len(expired))
        if other is None:
            return 0
        request, response = (half, other) if isinstance(half, PendingRequest) else (other, half)
        assert isinstance(request, PendingRequest) and isinstance(response, PendingResponse)
        return self._append(state, request, response, now)

    def _read_request(self, state: ServiceState, event: InferenceEvent) -> PendingRequest:
        rows = parse_seldon_request(event.body) if event.protocol == "seldon" else parse_request(event.body)
        matrices: dict[str, FloatArray | bytes] = {}
        errors: dict[str, str] = {}
        by_layout: dict[int, FloatArray | str] = {}
        for name, version in list(state.versions.items()):
            layout = id(version.reference)
            if layout not in by_layout:
                try:
                    by_layout[layout] = rows.to_matrix(
                        version.reference.features, version.reference.categorical
                    )
                except PayloadError as exc:
                    by_layout[layout] = str(exc)
            result = by_layout[layout]
            if isinstance(result, str):
                errors[name] = result
            else:
                matrices[name] = result
        if not matrices and errors:
            message = next(iter(errors.values()))
            raise EventRejected(DropReason.FEATURE_MISMATCH, f"request {event.id}: {message}")
        return PendingRequest(event, rows.count, matrices, errors)

    def _append(
        self, state: ServiceState, request: PendingRequest, response: PendingResponse, now: float
    ) -> int:
        predictions = response.predictions
        count = request.rows
        ignored = False
        with state.lock:
            version = state.version_for(predictions.model_version, response.event.endpoint)
            if version is None:
                drop = DropReason.UNKNOWN_VERSION
            elif (1 if isinstance(predictions, OnePrediction) else len(predictions.values)) != count:
                drop = DropReason.INVALID_PAYLOAD
            elif not _fits(request.matrices.get(version.name), version.window):
                # Laid out for none of this name's (or for one that a registration replaced since).
                drop = DropReason.FEATURE_MISMATCH
            else:
                drop = None
                window = version.window
                window.expire(now)
                if count == 1:
                    ignored = self._append_row(state, version, request, predictions, now)
                else:
                    assert isinstance(predictions, ResponsePredictions)
                    ignored = self._append_rows(state, version, request, predictions, now)
                version.appended += count
                if not version.complete:
                    version.update_complete(now, self.window_settings)
                due = not version.woken and self._rows_due(version)
                if due:
                    version.woken = True
        if drop is not None:
            logger.debug("%s/%s event %s dropped: %s", state.namespace, state.name, request.event.id, drop)
            self._on_drop(drop, 1)
            return 0
        if ignored:
            self._on_ignore(ProbabilitiesIgnored.CLASSES)
        if due:
            self.wake()
        return count

    def _append_row(
        self,
        state: ServiceState,
        version: VersionState,
        request: PendingRequest,
        predictions: ResponsePredictions | OnePrediction,
        now: float,
    ) -> bool:
        """Append a pair of one row (read with numpy or without) to the window and the row index; whether
        its probabilities were ignored for their number of classes. The caller holds the lock."""
        features = request.matrices[version.name]
        row = features if isinstance(features, bytes) else features[0].tobytes()
        given: Sequence[float] | None
        if isinstance(predictions, OnePrediction):
            value, given = predictions.value, predictions.probabilities
        else:
            value = predictions.values[0]
            given = None if predictions.probabilities is None else predictions.probabilities[0]
        window = version.window
        ignored = False
        if not window.classes:
            given = None
        elif given is not None and len(given) != window.classes:
            given, ignored = None, True
        row_id = request.event.id
        window.append_row(row, version.encode_prediction(value), value, row_id, now, given)
        # _index_row's, inline: once per row
        index = state.row_index
        index[row_id] = (version.name, value)
        if state.labels:
            label = state.labels.get(row_id)
            if label is not None and label.version is None:
                label.version = version.name
                version.feedback.add(value, label.value)
        if len(index) > self._max_ids:
            index.popitem(last=False)
        return ignored

    def _append_rows(
        self,
        state: ServiceState,
        version: VersionState,
        request: PendingRequest,
        predictions: ResponsePredictions,
        now: float,
    ) -> bool:
        """Append a pair of several rows; as :meth:`_append_row`."""
        features = request.matrices[version.name]
        assert not isinstance(features, bytes)
        count = len(features)
        event_id = request.event.id
        ids = [f"{event_id}/{index}" for index in range(count)]
        window = version.window
        probabilities = predictions.probabilities if window.classes else None
        ignored = False
        if probabilities is not None and probabilities.shape[1] != window.classes:
            probabilities, ignored = None, True
        window.append(
            features,
            version.encode_predictions(predictions.values),
            predictions.values,
            ids,
            now,
            probabilities,
        )
        for row_id, prediction in zip(ids, predictions.values.tolist(), strict=True):
            self._index_row(state, version, row_id, prediction)
        return ignored

    def _index_row(self, state: ServiceState, version: VersionState, row_id: str, prediction: Any) -> None:
        """Remember which version predicted what for ``row_id``, to join its label; join a label that
        waited for it."""
        index = state.row_index
        index[row_id] = (version.name, prediction)
        label = state.labels.get(row_id)
        if label is not None and label.version is None:
            label.version = version.name
            version.feedback.add(prediction, label.value)
        while len(index) > self._max_ids:
            index.popitem(last=False)

    def _rows_due(self, version: VersionState) -> bool:
        settings = self.window_settings
        if len(version.window) < settings.min_rows:
            return False
        for mark in version.marks.values():
            if mark.changes < 0 or version.appended - mark.appended >= settings.evaluate_every_rows:
                return True
        return False

    def expire(self) -> None:
        """Expire old rows, unpaired halves and pending labels (called by the evaluation timer)."""
        now = self.clock()
        with self._pairing_lock:
            expired = self._pairing.expire(now)
        if expired:
            self._on_drop(DropReason.UNPAIRED, len(expired))
        for state in self.services():
            with state.lock:
                state.labels.expire(now)
                for version in state.versions.values():
                    version.window.expire(now)
                    version.update_complete(now, self.window_settings)

    # --- feedback --------------------------------------------------------------------------------

    def add_labels(self, namespace: str, name: str, labels: Sequence[tuple[str, Any]]) -> tuple[int, int]:
        """Record ground truth by row id; returns (joined now, waiting for their row). Ids and labels
        longer than the limits raise :class:`Refused` before any is recorded."""
        state = self.service(namespace, name)
        for position, (row_id, value) in enumerate(labels):
            if len(row_id) > self.limits.max_id_length:
                raise Refused(
                    RefusalReason.ID_TOO_LONG,
                    f"labels[{position}].id is {len(row_id)} characters long; at most "
                    f"{self.limits.max_id_length} (MODELLOOP_DETECTOR_MAX_ID_LENGTH)",
                )
            if len(str(value)) > self.limits.max_label_length:
                raise Refused(
                    RefusalReason.INVALID_LABEL,
                    f"labels[{position}].label is longer than {self.limits.max_label_length} characters "
                    "(MODELLOOP_DETECTOR_MAX_LABEL_LENGTH)",
                )
        now = self.clock()
        joined = 0
        with state.lock:
            for row_id, value in labels:
                previous = state.labels.get(row_id)
                label = state.labels.put(row_id, value, now)
                if previous is not None and previous.version is not None:
                    label.version = previous.version  # a correction: not counted twice
                    continue
                known = state.row_index.get(row_id)
                if known is not None and known[0] in state.versions:
                    label.version = known[0]
                    state.versions[known[0]].feedback.add(known[1], value)
                    joined += 1
            pending = state.labels.pending()
        return joined, pending

    # --- evaluation ------------------------------------------------------------------------------

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Have ``wake`` called when a window has enough new rows to be judged."""
        self._wakers.append(wake)

    def wake(self) -> None:
        """Tell the evaluation loops that a window is due."""
        for wake in self._wakers:
            wake()

    def due(self, kind: LoopKind) -> Iterator[tuple[ServiceState, VersionState]]:
        """The versions that loop ``kind`` should judge now."""
        settings = self.window_settings
        now = self.clock()
        for state in self.services():
            with state.lock:
                versions = list(state.versions.values())
                for version in versions:
                    version.window.expire(now)
            for version in versions:
                mark = version.marks[kind]
                if evaluation_due(
                    rows=len(version.window),
                    changes=version.window.changes - mark.changes if mark.changes >= 0 else None,
                    new_rows=version.appended - mark.appended,
                    seconds=now - mark.time,
                    settings=settings,
                ):
                    yield state, version

    def judge(self, state: ServiceState, version: VersionState, kind: LoopKind) -> list[Verdict]:
        """Judge ``version``'s window now with loop ``kind``'s detectors; records and returns the verdicts."""
        now = self.clock()
        estimator = version.estimation.estimator if version.estimation is not None else None
        labelled: tuple[list[Any], list[Any]] | None = None
        with state.lock:
            snapshot = version.window.snapshot()
            if kind == "fast" and estimator is not None:
                labelled = _labelled_rows(state, version)
            mark = version.marks[kind]
            mark.changes, mark.appended, mark.time = version.window.changes, version.appended, now
            version.woken = False
        if kind == "fast":
            verdicts = version.detectors.judge_fast(snapshot, now)
        else:
            mmd = version.detectors.judge_mmd(snapshot, now)
            verdicts = [mmd] if mmd is not None else []
        with state.lock:
            for verdict in verdicts:
                version.verdicts[verdict.detector] = verdict
        if estimator is not None:
            self._estimate(state, version, estimator, snapshot, labelled, now)
        return verdicts

    def _estimate(
        self,
        state: ServiceState,
        version: VersionState,
        estimator: PerformanceEstimator,
        snapshot: WindowSnapshot,
        labelled: tuple[list[Any], list[Any]] | None,
        now: float,
    ) -> None:
        """Estimate ``version``'s performance on the window (once ``min_rows`` of its rows have class
        probabilities; a regressor's, ``min_rows`` rows with a numeric prediction), and measure it on the
        window's labelled rows (once ``min_rows`` have a label). What could not be computed keeps its
        last value, as verdicts do."""
        realised: Realised | None = None
        try:
            estimates = estimator.estimate(snapshot.features, snapshot.probabilities, snapshot.predictions)
            if labelled is not None and len(labelled[0]) >= self.window_settings.min_rows:
                predictions, labels = labelled
                values = realised_performance(estimator.task, predictions, labels, estimator.classes)
                realised = Realised(values, len(predictions), now) if values else None
        except Exception:
            logger.exception(
                "%s/%s version %s: estimating its performance failed",
                state.namespace,
                state.name,
                version.name,
            )
            return
        with state.lock:
            if estimates:
                version.estimates, version.estimated_at = tuple(estimates), now
            if realised is not None:
                version.realised = realised

    # --- export ----------------------------------------------------------------------------------

    def export_rows(
        self, namespace: str, name: str, version_name: str | None, target_column: str | None
    ) -> Export:
        """The window's rows (one version's, or every version's) with their labels, as table columns."""
        state = self.service(namespace, name)
        target = target_column or state.target_column or "target"
        with state.lock:
            if version_name is not None:
                if version_name not in state.versions:
                    raise UnknownService(f"service {namespace}/{name} has no version {version_name}")
                versions = [state.versions[version_name]]
            else:
                versions = list(state.versions.values())
            features = versions[0].reference.features if versions else ()
            if any(version.reference.features != features for version in versions):
                raise NothingToExport(
                    "the versions' references have different features; export one version at a time"
                )
            taken: list[tuple[VersionState, WindowRows]] = [
                (version, version.window.rows()) for version in versions
            ]
            labels = [[_label_value(state.labels.get(row_id)) for row_id in rows.ids] for _, rows in taken]
        if target in features:
            raise NothingToExport(f"targetColumn {target!r} is also a feature column")
        columns: dict[str, list[Any]] = {feature: [] for feature in features}
        columns[target] = []
        for (version, rows), row_labels in zip(taken, labels, strict=True):
            for index, feature in enumerate(features):
                values = rows.features[:, index]
                codes = version.reference.categorical.get(index)
                columns[feature].extend(codes.decode(values) if codes is not None else values.tolist())
            columns[target].extend(row_labels)
        count = len(columns[target])
        if not count:
            raise NothingToExport(f"service {namespace}/{name} has no rows in its window to export")
        labelled = sum(value is not None for value in columns[target])
        return Export(features=features, target_column=target, columns=columns, rows=count, labelled=labelled)


def _one_row(state: ServiceState, event: InferenceEvent) -> dict[str, FloatArray | bytes] | None:
    """A request of one row of numbers, read without numpy, laid out for every version: its numbers as
    they are (packed as the versions' windows keep them) for versions without categorical features whose
    reference has as many, in the same order where the request names them; None where it is anything
    else, for :func:`parse_request` to read."""
    row: list[Any] | None
    names: tuple[str, ...] | None
    if event.protocol == "seldon":
        read = seldon_request_row(event.body)
        if read is None:
            return None
        row, names = read
    else:
        row, names = request_row(event.body), None
        if row is None:
            return None
    # A registration replaces the dict, never changes it: this one can be read without the lock.
    versions = state.versions
    width = len(row)
    packed = b""
    for version in versions.values():
        if version.row_width != width:
            return None
        if names is not None and width > 1 and names != version.reference.features:
            return None
        if not packed:
            # Checks that the values are numbers (or booleans), as numpy's float conversion would: any
            # other (text, None...) goes to parse_request, which converts or refuses it.
            try:
                packed = version.window.pack_row(*row)
            except (struct.error, OverflowError):
                return None
    return dict.fromkeys(versions, packed)


# A named tuple made with every field, without its __new__ (a Python function): half the cost, per event.
_new = tuple.__new__
_NO_ERRORS: Mapping[str, str] = MappingProxyType({})


def _fits(features: FloatArray | bytes | None, window: RowWindow) -> bool:
    """Whether a request's rows laid out for a version (one packed row, or an array) fit its window."""
    if features is None:
        return False
    if isinstance(features, bytes):
        return len(features) == window.packed_size
    return int(features.shape[1]) == window.width


def _read_response(event: InferenceEvent) -> ResponsePredictions | OnePrediction:
    """A response's predictions: one read without numpy where it is one, else all of them."""
    if event.protocol == "seldon":
        one = seldon_one_prediction(event.body)
        return parse_seldon_response(event.body) if one is None else one
    one = one_prediction(event.body)
    return parse_response(event.body) if one is None else one


def _label_value(label: Any) -> Any:
    return None if label is None else label.value


def _labelled_rows(state: ServiceState, version: VersionState) -> tuple[list[Any], list[Any]]:
    """The predictions and labels of ``version``'s window rows that have a label. The caller holds the
    service's lock."""
    book = state.labels
    served: list[Any] = []
    labels: list[Any] = []
    if not len(book):
        return served, labels
    ids, predictions = version.window.predictions_by_id()
    for row_id, prediction in zip(ids, predictions.tolist(), strict=True):
        label = book.get(row_id)
        if label is not None:
            served.append(prediction)
            labels.append(label.value)
    return served, labels


def evaluation_due(
    *, rows: int, changes: int | None, new_rows: int, seconds: float, settings: WindowSettings
) -> bool:
    """Whether a window is judged now: it has ``min_rows``, it changed since its last verdict
    (``changes`` None: never judged), and ``evaluate_every_rows`` rows or ``evaluate_every_seconds``
    passed since."""
    if rows < settings.min_rows:
        return False
    if changes is None:
        return True
    if changes == 0:
        return False
    return new_rows >= settings.evaluate_every_rows or seconds >= settings.evaluate_every_seconds
