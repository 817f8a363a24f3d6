"""Reads objects from the API server the way ``kubectl get -o json`` does, over one kept-alive HTTPS
connection per thread instead of a kubectl process per read.

The suite polls: every wait and every stand-in reads objects several times a second. As kubectl processes,
those reads took a sixth of the suite's CPU (each one loads kubectl, its discovery cache and a new TLS
session). :class:`ApiReader` answers the same reads in the same shape: an object as the API server sends it
in the resource's preferred version, a list as kubectl's ``List`` with each item's ``apiVersion`` and
``kind``. Resource names are resolved as kubectl resolves them (plural, singular, short name or kind;
``resource.group`` and ``resource.version.group``; the first match in discovery order, the core group
first), from the API server's aggregated discovery.

Whatever it cannot answer exactly as kubectl would raises :class:`Unsupported`, and the caller runs
kubectl instead: a kubeconfig whose user is not a client certificate or a token (an exec plugin), a
resource name discovery does not know (yet), an API server without aggregated discovery.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
VERSION = re.compile(r"^v\d+((alpha|beta)\d+)?$")
MAX_RETRIES = 10
"""How often a read is asked again when the API server answers 429 (or 5xx) with a Retry-After, as
client-go's REST client does."""
REDISCOVER_AFTER = 2.0
"""A name discovery does not know is looked up again at most this often (a CRD just installed); in
between, kubectl answers for it."""


class Unsupported(Exception):
    """This read is not one the reader answers exactly as kubectl: let kubectl do it."""


class ApiStatusError(Exception):
    """The API server refused the read; ``reason`` and ``message`` are its Status's."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"({reason}): {message}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    names: frozenset[str]

    def path(self, namespace: str | None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if self.namespaced else f"{base}/{self.plural}"


class ApiReader:
    """Reads for one kubeconfig (its current context): see the module's docstring."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        current = config.get("current-context")
        context = next((c["context"] for c in config.get("contexts") or () if c["name"] == current), None)
        if context is None:
            raise Unsupported("no current context")
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u["user"] for u in config.get("users") or () if u["name"] == context.get("user")), {})
        server = urllib.parse.urlsplit(cluster["server"])
        if server.scheme != "https" or server.path not in ("", "/") or not server.hostname:
            raise Unsupported(f"server {cluster['server']}")
        self.host, self.port = server.hostname, server.port or 443
        self.namespace = context.get("namespace") or "default"
        self._headers = {"Accept": "application/json", "User-Agent": "modelloop-e2e"}
        ca_data = cluster.get("certificate-authority-data")
        ca_text = base64.b64decode(ca_data).decode() if ca_data else None
        self._tls = ssl.create_default_context(cafile=cluster.get("certificate-authority"), cadata=ca_text)
        if cluster.get("insecure-skip-tls-verify") or cluster.get("tls-server-name"):
            raise Unsupported("TLS options")
        if set(user) == {"client-certificate", "client-key"}:
            self._tls.load_cert_chain(user["client-certificate"], user["client-key"])
        elif set(user) == {"token"}:
            self._headers["Authorization"] = f"Bearer {user['token']}"
        else:
            raise Unsupported(f"user {sorted(user)}")
        self._local = threading.local()
        self._lock = threading.RLock()
        self._resources: list[Resource] | None = None
        self._discovered_at = 0.0

    # -- reads ----------------------------------------------------------------------------------------

    def get(
        self,
        resource: str,
        name: str | None = None,
        namespace: str | None = None,
        selector: str | None = None,
    ) -> Any:
        """What ``kubectl get RESOURCE [NAME] [-n NAMESPACE] [-l SELECTOR] -o json`` prints, parsed."""
        target = self.resolve(resource)
        path = target.path(namespace or self.namespace)
        if name:
            if selector:
                raise Unsupported("a name and a selector")
            return _as_printed(self._read(f"{path}/{urllib.parse.quote(name, safe='')}"))
        query = f"?{urllib.parse.urlencode({'labelSelector': selector})}" if selector else ""
        listed = self._read(path + query)
        api_version, kind = listed.get("apiVersion", ""), str(listed.get("kind", "")).removesuffix("List")
        items = [
            _as_printed({"apiVersion": api_version, "kind": kind, **item})
            for item in listed.get("items") or ()
        ]
        return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}

    def resolve(self, resource: str) -> Resource:
        """The resource kubectl would read for ``resource``; :class:`Unsupported` when discovery, asked
        again if it was not just now, does not know it."""
        found = self._match(self._discovery(), resource)
        if found is None and time.monotonic() - self._discovered_at > REDISCOVER_AFTER:
            found = self._match(self._discovery(refresh=True), resource)
        if found is None:
            raise Unsupported(f"resource {resource!r}")
        return found

    @staticmethod
    def _match(resources: list[Resource], arg: str) -> Resource | None:
        arg = arg.lower()
        name, _, rest = arg.partition(".")
        version, _, group = rest.partition(".")
        wanted: list[tuple[str | None, str | None]] = [(None, None)] if not rest else [(None, rest)]
        if rest and VERSION.match(version) and group:
            wanted.insert(0, (version, group))
        for want_version, want_group in wanted:
            for r in resources:
                if name not in r.names:
                    continue
                if want_group is not None and r.group != want_group:
                    continue
                if want_version is not None and r.version != want_version:
                    continue
                return r
        return None

    def _discovery(self, refresh: bool = False) -> list[Resource]:
        with self._lock:
            if self._resources is None or refresh:
                resources: list[Resource] = []
                for root in ("/api", "/apis"):
                    document = self._read(root, accept=AGGREGATED_DISCOVERY)
                    if document.get("kind") != "APIGroupDiscoveryList":
                        raise Unsupported("no aggregated discovery")
                    for group in document.get("items") or ():
                        group_name = group.get("metadata", {}).get("name", "")
                        seen: set[str] = set()
                        # Versions come preferred first: a resource is read in the first that serves it.
                        for version in group.get("versions") or ():
                            for r in version.get("resources") or ():
                                if r["resource"] in seen:
                                    continue
                                seen.add(r["resource"])
                                kind = r.get("responseKind", {}).get("kind", "")
                                names = {r["resource"], r.get("singularResource", ""), kind.lower()}
                                names.update(r.get("shortNames") or ())
                                resources.append(
                                    Resource(
                                        group=group_name,
                                        version=version["version"],
                                        plural=r["resource"],
                                        kind=kind,
                                        namespaced=r.get("scope") == "Namespaced",
                                        names=frozenset(n for n in names if n),
                                    )
                                )
                self._resources = resources
                self._discovered_at = time.monotonic()
            return self._resources

    # -- the connection -------------------------------------------------------------------------------

    def _read(self, path: str, accept: str | None = None) -> Any:
        headers = {**self._headers, **({"Accept": accept} if accept else {})}
        reconnected, retries = False, 0
        while True:
            connection = self._connection()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The API server closed a connection kept from an earlier read: a GET is safe to repeat.
                self._drop()
                if reconnected:
                    raise
                reconnected = True
                continue
            except BaseException:
                self._drop()
                raise
            retry_after = response.getheader("Retry-After")
            if (response.status == 429 or response.status >= 500) and retry_after and retries < MAX_RETRIES:
                # As kubectl's client does: "storage is (re)initializing" (a CRD's cache, just made), or a
                # busy server, says when to ask again.
                retries += 1
                time.sleep(min(max(float(retry_after) if retry_after.isdigit() else 1.0, 0.1), 10.0))
                continue
            if response.status >= 400:
                self._raise(response.status, body)
            return json.loads(body)

    def _raise(self, code: int, body: bytes) -> None:
        try:
            status: Mapping[str, Any] = json.loads(body)
        except ValueError:
            status = {}
        details = status.get("details") or {}
        if code == 404 and not details.get("name"):
            # The resource itself is gone (a CRD removed): kubectl says so in its own words.
            with self._lock:
                self._resources = None
            raise Unsupported("the resource is not served")
        reason, message = status.get("reason") or code, status.get("message") or body[:200]
        raise ApiStatusError(code, str(reason), str(message))

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self._tls, timeout=60)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()


def _as_printed(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as kubectl prints it: without its managed fields (``--show-managed-fields`` is off)."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return obj


_READERS: dict[tuple[str, int, int], ApiReader | None] = {}
_READERS_LOCK = threading.Lock()


def reader_for(kubeconfig: Path) -> ApiReader | None:
    """The reader for this kubeconfig as it is now (one per file and version of it), or None when reads
    with it must go through kubectl."""
    try:
        stat = kubeconfig.stat()
    except OSError:
        return None
    key = (str(kubeconfig), stat.st_mtime_ns, stat.st_size)
    with _READERS_LOCK:
        if key not in _READERS:
            try:
                _READERS[key] = ApiReader(kubeconfig)
            except (Unsupported, OSError, KeyError, StopIteration, ssl.SSLError, yaml.YAMLError):
                _READERS[key] = None
        return _READERS[key]
