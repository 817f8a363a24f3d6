"""Watches that outlive the watch requests they are made of, for the e2e tests and the benches.

The API server ends every watch sooner or later: at its ``timeoutSeconds``, when it drops a watcher that
reads too slowly, or with 410 Gone once the resourceVersion it was asked to resume from is no longer in its
cache. A wait built on one watch request (``kubernetes.watch.Watch().stream`` with a timeout, say) then
stops hearing about changes, and waits until its deadline for objects that reached their state long ago.

:class:`ResumableWatch` lists once, then watches from the list's resourceVersion; when a watch request ends
it watches again from the last resourceVersion it saw (bookmarks included), and after 410 Gone it lists
again, reporting what the list shows as ADDED and what it no longer shows as DELETED, so a consumer's view
never misses a change for good. :func:`wait_until_each` follows one until enough objects are in a state.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kubernetes
import urllib3

from e2e.harness import Timeout

GONE = 410
ObjectKey = tuple[str, str]
"""An object's (namespace, name)."""


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ResumableWatch:
    """The events of one list endpoint of the Python client (``CoreV1Api.list_namespaced_config_map``,
    ``CustomObjectsApi.list_namespaced_custom_object``...; ``args`` and ``kwargs`` are its own, a label
    selector for instance), as ``{"type": ..., "object": dict}``, across as many watch requests as it takes.

    ``timeout_seconds`` is what each watch request asks the server for (the server may end it sooner);
    ``resource_version`` starts from that version instead of from a list. ``restarts`` counts the watch
    requests made after the first; ``relists`` the lists made after 410 Gone."""

    def __init__(
        self,
        list_function: Callable[..., Any],
        *args: Any,
        timeout_seconds: int = 300,
        resource_version: str | None = None,
        connect_timeout: float = 10,
        **kwargs: Any,
    ) -> None:
        self._list_function, self._args, self._kwargs = list_function, args, kwargs
        self.timeout_seconds = timeout_seconds
        self.resource_version = resource_version
        self.connect_timeout = connect_timeout
        self.restarts = 0
        self.relists = 0
        self.listed = threading.Event()
        """Set once the watch has its starting point (the first list done, or a version given)."""
        self._known: dict[ObjectKey, dict[str, Any]] = {}
        self._stopped = threading.Event()
        self._response: Any = None
        self._watches = 0

    def stop(self) -> None:
        """End :meth:`events` (from another thread too): the open watch request is shut down."""
        self._stopped.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to interrupt
                response.shutdown()

    def events(self, until: float | None = None) -> Iterator[dict[str, Any]]:
        """Every change from the start until :meth:`stop` or, if given, the ``time.monotonic()`` moment
        ``until`` (the events then stop; the caller decides whether that is a failure)."""
        if self.resource_version is None:
            yield from self._list()
        self.listed.set()
        failures = 0
        while not self._stopped.is_set():
            left = math.inf if until is None else until - time.monotonic()
            if left <= 0:
                return
            try:
                seconds = self.timeout_seconds  # without a deadline (until None), left is infinite
                if until is not None:
                    seconds = min(seconds, math.ceil(left))
                gone = yield from self._watch(max(1, seconds))
                failures = 0
            except kubernetes.client.ApiException as error:
                if error.status == GONE:
                    gone = True
                elif error.status == 429 or (error.status or 0) >= 500:
                    gone, failures = False, failures + 1  # the server is busy: back off, then resume
                else:
                    raise
            except (urllib3.exceptions.HTTPError, OSError):
                if self._stopped.is_set():
                    return
                gone, failures = False, failures + 1  # the connection broke: resume where it was
            if gone:
                self.relists += 1
                yield from self._list()
            if failures:
                self._stopped.wait(min(2.0, 0.05 * 2**failures))

    def _list(self) -> Iterator[dict[str, Any]]:
        """List, report each object as ADDED and each one known before but gone as DELETED, and go on from
        the list's resourceVersion."""
        response = self._list_function(
            *self._args, **self._kwargs, _preload_content=False, _request_timeout=(self.connect_timeout, 60)
        )
        listed = json.loads(response.data)
        objects = {object_key(obj): obj for obj in listed.get("items") or ()}
        self.resource_version = listed["metadata"]["resourceVersion"]
        for key in [k for k in self._known if k not in objects]:
            yield {"type": "DELETED", "object": self._known.pop(key)}
        for key, obj in objects.items():
            self._known[key] = obj
            yield {"type": "ADDED", "object": obj}

    def _watch(self, seconds: int) -> Iterator[dict[str, Any]]:
        """One watch request from the current resourceVersion; returns True if the server answered 410
        Gone (list again), False when it ended the watch otherwise (watch again from where it was)."""
        if self._watches:
            self.restarts += 1
        self._watches += 1
        response = self._list_function(
            *self._args,
            **self._kwargs,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _preload_content=False,
            # A bookmark comes about once a minute; a quiet watch may send nothing until its timeout.
            _request_timeout=(self.connect_timeout, seconds + 30),
        )
        self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == GONE:
                        return True
                    raise kubernetes.client.ApiException(
                        status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}"
                    )
                self.resource_version = (obj.get("metadata") or {}).get(
                    "resourceVersion"
                ) or self.resource_version
                if event.get("type") == "BOOKMARK":
                    continue
                if event.get("type") == "DELETED":
                    self._known.pop(object_key(obj), None)
                else:
                    self._known[object_key(obj)] = obj
                yield {"type": event["type"], "object": obj}
                if self._stopped.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return False


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-delimited JSON lines of a streamed response, as they arrive."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line


def wait_until_each(
    watch: ResumableWatch,
    reached: Callable[[Mapping[str, Any]], bool],
    count: int,
    *,
    timeout: float,
    what: str,
) -> dict[ObjectKey, dict[str, Any]]:
    """Follow ``watch`` until ``count`` objects are, as last seen, in the state ``reached`` tells (an
    object that leaves it no longer counts), and return them by (namespace, name). Fails with
    :class:`~e2e.harness.Timeout` after ``timeout`` seconds, saying how many got there."""
    deadline = time.monotonic() + timeout
    there: dict[ObjectKey, dict[str, Any]] = {}
    if count <= 0:
        return there
    seen: set[ObjectKey] = set()
    for event in watch.events(until=deadline):
        obj, key = event["object"], object_key(event["object"])
        seen.add(key)
        if event["type"] != "DELETED" and reached(obj):
            there[key] = obj
        else:
            there.pop(key, None)
        if len(there) >= count:
            return there
    raise Timeout(
        f"timed out after {timeout:.0f}s waiting for {count} {what}: {len(there)} of the {len(seen)} "
        f"objects seen got there (watch resumed {watch.restarts} times, listed again {watch.relists})"
    )
