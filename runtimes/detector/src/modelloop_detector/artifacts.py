"""Where the detector may read references and write exports: under its artifact roots, nowhere else.

A registration's ``referenceUri`` and an export's ``uriPrefix`` come from callers; fsspec would open
whatever they name (``file:///etc/passwd``, another team's bucket, ``http://`` inside the cluster).
:class:`ArtifactRoots` holds the URI prefixes the detector is configured with
(``MODELLOOP_DETECTOR_ARTIFACT_ROOTS``, comma-separated, e.g. ``s3://models,file:///var/lib/modelloop``)
and turns a caller's URI into the normalised URI that is then opened, or refuses it (HTTP 403).
Normalising resolves ``.`` and ``..`` (and, for local files, symbolic links) before the prefix check, so
no spelling escapes a root.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from modelloop_detector.limits import RefusalReason, Refused

ROOTS_VARIABLE = "MODELLOOP_DETECTOR_ARTIFACT_ROOTS"
# The operator's default artifact root lives under it (MODELLOOP_ARTIFACT_ROOT,
# file:///var/lib/modelloop/artifacts), and so do file:// exports on the chart's volume.
DEFAULT_ROOTS = ("file:///var/lib/modelloop",)
# Protocols whose paths are "bucket/key": compared without touching a file system.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


@dataclass(frozen=True)
class Location:
    """A normalised URI: its protocol (``file``, ``s3``...) and its absolute path (``/bucket/key``)."""

    protocol: str
    path: str

    @property
    def uri(self) -> str:
        """The URI that is opened."""
        if self.protocol == "file":
            return f"file://{self.path}"
        return f"{self.protocol}://{self.path.lstrip('/')}"

    def within(self, root: Location) -> bool:
        """Whether this location is ``root`` or under it (whole path segments only)."""
        if self.protocol != root.protocol:
            return False
        base = root.path.rstrip("/") or "/"
        return self.path == base or self.path.startswith(base if base.endswith("/") else base + "/")


class ArtifactRoots:
    """The URI prefixes under which references are read and exports written."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = tuple(_parse(root, what="artifact root", resolve=True) for root in roots)
        if not self.roots:
            raise ValueError(f"{ROOTS_VARIABLE} names no artifact root")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ArtifactRoots:
        """The roots in ``MODELLOOP_DETECTOR_ARTIFACT_ROOTS``, else :data:`DEFAULT_ROOTS`."""
        text = env.get(ROOTS_VARIABLE, "")
        roots = [part.strip() for part in text.split(",") if part.strip()]
        return cls(roots or DEFAULT_ROOTS)

    def __str__(self) -> str:
        return ", ".join(root.uri for root in self.roots)

    def check(self, field: str, uri: str) -> str:
        """The normalised URI to open for ``uri``, or :class:`Refused` (403) when it is not under a root."""
        try:
            location = _parse(uri, what=field, resolve=True)
        except ValueError as exc:
            raise Refused(RefusalReason.OUTSIDE_ARTIFACT_ROOTS, str(exc), 403) from None
        if not any(location.within(root) for root in self.roots):
            raise Refused(
                RefusalReason.OUTSIDE_ARTIFACT_ROOTS,
                f"{field} {uri!r} is not under the detector's artifact roots ({self}); "
                f"the detector reads and writes only there ({ROOTS_VARIABLE})",
                403,
            )
        return location.uri


def _parse(uri: str, *, what: str, resolve: bool) -> Location:
    if "::" in uri:
        raise ValueError(f"{what} {uri!r} chains filesystems ('::'); name one file:// or s3:// location")
    if any(ord(char) < 32 for char in uri):
        raise ValueError(f"{what} has control characters")
    parts = urlsplit(uri)
    protocol = parts.scheme.lower()
    if not protocol:
        raise ValueError(f"{what} {uri!r} names no protocol; write file:///... or s3://bucket/...")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} {uri!r} has a query or fragment; name a plain location")
    if protocol == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{what} {uri!r} names a host; file:// locations are local: file:///path")
        path = os.path.normpath(parts.path or "/")
        if not path.startswith("/"):
            raise ValueError(f"{what} {uri!r} is not an absolute path")
        if resolve:
            path = os.path.realpath(path)  # a symbolic link under a root must not lead out of it
        return Location("file", path)
    if protocol in OBJECT_STORES:
        if not parts.netloc:
            raise ValueError(f"{what} {uri!r} names no bucket")
        path = posixpath.normpath("/" + parts.netloc + "/" + parts.path.lstrip("/"))
        if path.startswith("//"):
            path = path[1:]
        return Location(protocol, path)
    raise ValueError(
        f"{what} {uri!r} uses protocol {protocol!r}; the detector reads file:// and object stores "
        f"({', '.join(sorted(OBJECT_STORES))}) under its artifact roots only"
    )
