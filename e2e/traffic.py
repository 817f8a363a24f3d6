"""A stand-in gateway and a load generator for the model servers that :mod:`e2e.serving` runs.

No gateway and no Knative data plane run here: nothing routes by an HTTPRoute's weights or by a Knative
Route's percentages. :class:`LoadGenerator` does that routing itself. On every tick it reads (at most once
per ``route_refresh_s``) the weights of the route under test with a *route reader*, picks a backend by
weight (smooth weighted round robin, as Envoy and nginx do: a backend of weight 0 gets nothing, 10/90
is 10/90 to the request), picks one of that backend's serving pods in turn, and sends it one single-row V1
prediction (``POST /v1/models/<model>:predict`` with ``{"instances": [[...]]}``). It counts every response
by (pod, status code), so a test can assert, say, that no request reached the canary while its weight
was 0.

A backend may be a *mirror* (Seldon's shadow predictor): it gets no weight of its own, and every request
routed elsewhere is also sent, after it, to one of its pods; what the mirror answers is counted apart
(:meth:`LoadGenerator.mirrored_to`) and reaches no one. Requests go in each endpoint's protocol: KServe's
V1, or Seldon's (``POST /api/v1.0/predictions`` with ``{"data": {"ndarray": rows}}``).

Two route readers come with it: :func:`httproute_weights` (a Gateway API HTTPRoute's backendRefs, each
Service resolved to its pods by the Service's selector, as KServe's Standard mode routes) and
:func:`knative_weights` (a KServe InferenceService's ``status.components.predictor.traffic``, each
revision's pods labelled ``serving.knative.dev/revision``, as KServe's Knative mode routes).

A misbehaving backend: :meth:`LoadGenerator.set_fault` makes a fraction of the requests that go to some
pods carry a body the model cannot read (:data:`MALFORMED_BODY`); the model server answers them 400 and
counts them in ``modelloop_server_requests_total{code="400"}``, which is what Prometheus sees of a new
version that rejects the traffic the old one served (a changed feature schema).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from e2e.harness import BackgroundLoop, Cluster
from e2e.serving import Endpoint

KNATIVE_REVISION_LABEL = "serving.knative.dev/revision"
MALFORMED_BODY: Mapping[str, Any] = {"instances": [["not a number"]]}
"""A V1 body no model can read: the server answers 400 (InvalidInput)."""
NO_RESPONSE = 0
"""The status code counted when a pod gave no HTTP response at all (refused, reset, timed out)."""

log = logging.getLogger(__name__)

PodPredicate = Callable[[str, Mapping[str, str]], bool]


class EndpointSource(Protocol):
    """What runs the servers (the stand-in kubelet, the Seldon stand-in): the endpoints ready now."""

    def endpoints(self) -> Mapping[str, Endpoint]: ...


"""A choice of pods: (pod name, pod labels) -> whether the pod is one of them."""


@dataclass(frozen=True)
class Backend:
    """One weighted destination of a route: a name (Service or revision) and the pods it selects."""

    name: str
    selector: tuple[tuple[str, str], ...] | None
    """Label pairs a pod must all have; None when the destination does not exist (it selects no pod)."""
    mirror: bool = False
    """It gets a copy of every request sent elsewhere (a shadow), never a request of its own."""

    @classmethod
    def of(cls, name: str, selector: Mapping[str, str] | None, mirror: bool = False) -> Backend:
        """A backend selecting the pods that have every label of ``selector``."""
        return cls(name, None if selector is None else tuple(sorted(selector.items())), mirror)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a pod with ``labels`` is one of this backend's."""
        return self.selector is not None and all(labels.get(k) == v for k, v in self.selector)


RouteReader = Callable[[], Mapping[Backend, int]]
"""Reads a route's current weights: backend -> weight (an empty mapping when there is no route yet)."""


def httproute_weights(cluster: Cluster, namespace: str, name: str, rule: int = 0) -> RouteReader:
    """The weights of a Gateway API HTTPRoute's ``spec.rules[rule].backendRefs[]`` (Service -> weight, 1 when
    unset), each Service resolved to its pods by its selector."""

    def read() -> Mapping[Backend, int]:
        route = cluster.get_or_none("httproutes.gateway.networking.k8s.io", name, namespace)
        if route is None:
            return {}
        rules = route.get("spec", {}).get("rules") or []
        if len(rules) <= rule:
            return {}
        services = {s["metadata"]["name"]: s for s in cluster.get("services", namespace=namespace)["items"]}
        weights: dict[Backend, int] = {}
        for ref in rules[rule].get("backendRefs") or ():
            if ref.get("kind", "Service") != "Service" or ref.get("namespace", namespace) != namespace:
                continue
            service = services.get(ref["name"])
            selector = None if service is None else (service.get("spec", {}).get("selector") or None)
            weights[Backend.of(ref["name"], selector)] = int(ref.get("weight", 1))
        return weights

    return read


def knative_weights(cluster: Cluster, namespace: str, name: str, component: str = "predictor") -> RouteReader:
    """The weights of a KServe InferenceService's ``status.components.<component>.traffic[]`` (revision ->
    percent, 0 when unset as for a tag-only entry), each revision's pods labelled
    ``serving.knative.dev/revision``."""

    def read() -> Mapping[Backend, int]:
        service = cluster.get_or_none("inferenceservices.serving.kserve.io", name, namespace)
        if service is None:
            return {}
        traffic = service.get("status", {}).get("components", {}).get(component, {}).get("traffic") or []
        weights: dict[Backend, int] = {}
        for target in traffic:
            revision = target.get("revisionName")
            if revision:
                backend = Backend.of(revision, {KNATIVE_REVISION_LABEL: revision})
                weights[backend] = weights.get(backend, 0) + int(target.get("percent") or 0)
        return weights

    return read


def fixed_weights(weights: Mapping[Backend, int]) -> RouteReader:
    """A route that does not change (for tests of the load generator itself)."""
    return lambda: weights


class WeightedPicker:
    """Smooth weighted round robin (nginx's, Envoy's): over any ``sum(weights)`` consecutive picks each
    backend is picked exactly its weight's times, interleaved; a backend of weight 0 never."""

    def __init__(self) -> None:
        self._current: dict[Backend, int] = {}

    def pick(self, weights: Mapping[Backend, int]) -> Backend | None:
        """The next backend, or None when no backend has weight."""
        live = {b: w for b, w in weights.items() if w > 0 and not b.mirror}
        if not live:
            return None
        for backend, weight in live.items():
            self._current[backend] = self._current.get(backend, 0) + weight
        chosen = max(live, key=lambda b: (self._current[b], b.name))
        self._current[chosen] -= sum(live.values())
        return chosen


class LoadGenerator(BackgroundLoop):
    """Sends ``rate_per_s`` single-row predictions a second, routed by weight, in a background thread."""

    def __init__(
        self,
        kubelet: EndpointSource,
        route_reader: RouteReader,
        rate_per_s: float,
        payload: list[float] | Callable[[str], Mapping[str, Any]],
        *,
        route_refresh_s: float = 1.0,
        timeout_s: float = 5.0,
        headers: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
    ) -> None:
        """``payload`` is one row of features (sent as ``{"instances": [row]}``), or a function of the pod
        name returning the whole V1 body; ``headers`` gives a body's extra request headers (e.g. the
        ``Ce-Id`` that KServe's payload logger takes as the event id)."""
        super().__init__("load-generator")
        self.kubelet = kubelet
        self.route_reader = route_reader
        self.rate_per_s = rate_per_s
        self.payload = payload
        self.route_refresh_s = route_refresh_s
        self.timeout_s = timeout_s
        self.headers = headers
        self._responses: Counter[tuple[str, int]] = Counter()
        self._mirrored: Counter[tuple[str, int]] = Counter()
        self._unroutable: Counter[str] = Counter()
        # (time.monotonic(), backend, whether that backend had not answered yet) of each unroutable request
        self._unroutable_at: list[tuple[float, str, bool]] = []
        self._answered_backends: set[str] = set()
        self._pod_labels: dict[str, Mapping[str, str]] = {}  # of every pod sent to, also deleted ones
        self._faults: list[tuple[PodPredicate, float]] = []
        self._fault_credit: dict[str, float] = {}
        self._weights: Mapping[Backend, int] = {}
        self._weights_read = float("-inf")
        self._picker = WeightedPicker()
        self._next_pod: Counter[Backend] = Counter()
        self._lock = threading.Lock()
        self.join_timeout = timeout_s + 30
        self.last_error: str | None = None
        """The last error of reading the route (the generator goes on with the weights it had)."""

    # --- running --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        period = 1.0 / self.rate_per_s
        due = time.monotonic()
        while not self._stopping.is_set():
            self.tick()
            due = max(due + period, time.monotonic() - period)  # no burst to catch up after a slow request
            self._stopping.wait(max(0.0, due - time.monotonic()))

    def tick(self) -> tuple[str, int] | None:
        """Send one request now, routed by the current weights; return (pod, status code), or None when
        nothing could take it (no weight, or the chosen backend has no serving pod)."""
        weights = self._read_weights()
        backend = self._picker.pick(weights)
        if backend is None:
            with self._lock:
                self._unroutable["<no backend with weight>"] += 1
                self._unroutable_at.append((time.monotonic(), "<no backend with weight>", False))
            return None
        endpoints = {n: e for n, e in self.kubelet.endpoints().items() if backend.matches(e.labels)}
        if not endpoints:
            with self._lock:
                self._unroutable[backend.name] += 1
                self._unroutable_at.append(
                    (time.monotonic(), backend.name, backend.name not in self._answered_backends)
                )
            return None
        pod = self._next(backend, endpoints)
        body = self._body(pod, endpoints[pod].labels)
        code = self._send(endpoints[pod], body)
        with self._lock:
            self._responses[(pod, code)] += 1
            self._pod_labels[pod] = endpoints[pod].labels
            self._answered_backends.add(backend.name)
        for mirror in [b for b in weights if b.mirror]:
            mirrors = {n: e for n, e in self.kubelet.endpoints().items() if mirror.matches(e.labels)}
            if mirrors:
                shadow = self._next(mirror, mirrors)
                answer = self._send(mirrors[shadow], body)
                with self._lock:
                    self._mirrored[(shadow, answer)] += 1
                    self._pod_labels[shadow] = mirrors[shadow].labels
        return pod, code

    def _next(self, backend: Backend, endpoints: Mapping[str, Endpoint]) -> str:
        names = sorted(endpoints)
        pod = names[self._next_pod[backend] % len(names)]
        self._next_pod[backend] += 1
        return pod

    # --- faults ---------------------------------------------------------------------------------------

    def set_fault(self, pods: PodPredicate | str, fraction: float) -> None:
        """Make ``fraction`` (0..1) of the requests to ``pods`` (a predicate, or one pod's name) malformed;
        spread evenly (every 1/fraction-th request), not at random, so a short window sees its share."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"a fault's fraction must be within 0..1, not {fraction}")
        predicate: PodPredicate = (lambda name, _labels: name == pods) if isinstance(pods, str) else pods
        with self._lock:
            self._faults.append((predicate, fraction))

    def clear_faults(self) -> None:
        """Every request well-formed again."""
        with self._lock:
            self._faults.clear()
            self._fault_credit.clear()

    # --- what a test reads ----------------------------------------------------------------------------

    def responses(self) -> dict[tuple[str, int], int]:
        """Responses so far by (pod, status code); :data:`NO_RESPONSE` when a pod did not answer."""
        with self._lock:
            return dict(self._responses)

    def sent_to(self, pods: PodPredicate | str) -> int:
        """How many requests went to ``pods`` (a predicate over name and labels, or one pod's name), whatever
        the answer, also to pods deleted since."""
        with self._lock:
            counts, labels = dict(self._responses), dict(self._pod_labels)
        chosen: PodPredicate = (lambda name, _labels: name == pods) if isinstance(pods, str) else pods
        return sum(count for (pod, _code), count in counts.items() if chosen(pod, labels[pod]))

    def mirrored_to(self, pods: PodPredicate | str) -> int:
        """How many mirrored copies went to ``pods`` (their answers reached no one)."""
        with self._lock:
            counts, labels = dict(self._mirrored), dict(self._pod_labels)
        chosen: PodPredicate = (lambda name, _labels: name == pods) if isinstance(pods, str) else pods
        return sum(count for (pod, _code), count in counts.items() if chosen(pod, labels[pod]))

    def unroutable(self) -> dict[str, int]:
        """Requests nothing could take, by backend name (a gateway would have answered them 503)."""
        with self._lock:
            return dict(self._unroutable)

    def unroutable_times(self) -> list[tuple[float, str, bool]]:
        """When (time.monotonic()) each request nothing could take was sent, to which backend, and whether
        that backend had answered no request before (its pods not serving yet)."""
        with self._lock:
            return list(self._unroutable_at)

    def weights(self) -> dict[str, int]:
        """The route's weights as last read, by backend name."""
        with self._lock:
            return {backend.name: weight for backend, weight in self._weights.items()}

    # --- internals ------------------------------------------------------------------------------------

    def _read_weights(self) -> Mapping[Backend, int]:
        now = time.monotonic()
        if now - self._weights_read >= self.route_refresh_s:
            self._weights_read = now
            try:
                weights = dict(self.route_reader())
            except Exception as error:  # the API server may be busy; route by what was read last
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("reading the route failed: %s", self.last_error)
            else:
                self.last_error = None
                with self._lock:
                    if weights != self._weights:
                        self._weights, self._picker = weights, WeightedPicker()
        return self._weights

    def _body(self, pod: str, labels: Mapping[str, str]) -> Mapping[str, Any]:
        with self._lock:
            fraction = max((f for predicate, f in self._faults if predicate(pod, labels)), default=0.0)
            if fraction > 0:
                credit = self._fault_credit.get(pod, 0.0) + fraction
                self._fault_credit[pod] = credit - (1 if credit >= 1 else 0)
                if credit >= 1:
                    return MALFORMED_BODY
        if callable(self.payload):
            return self.payload(pod)
        return {"instances": [list(self.payload)]}

    def _send(self, endpoint: Endpoint, v1_body: Mapping[str, Any]) -> int:
        if endpoint.protocol == "seldon":
            url = f"{endpoint.url}/api/v1.0/predictions"
            body = json.dumps({"data": {"ndarray": v1_body.get("instances")}}).encode()
        else:
            url = f"{endpoint.url}/v1/models/{endpoint.model}:predict"
            body = json.dumps(v1_body).encode()
        request = urllib.request.Request(
            url,
            data=body,
            headers={"Content-Type": "application/json", **(self.headers(v1_body) if self.headers else {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.read()
            return int(error.code)
        except OSError:
            return NO_RESPONSE
