"""Writing a window's rows as a training table, with the table's content hash.

The hash is ``modelloop_contracts``' ``dataset_hash``, the trainer's: the trainer reads the exported file
with ``pandas.read_csv`` and hashes that frame, so the detector hashes the frame that ``read_csv`` gives
back for the same bytes. The tests check that the trainer, in its own environment, gets the same value.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import fsspec
import pandas as pd
from modelloop_contracts import ExportedDataset, dataset_hash

from modelloop_detector.service import Export

logger = logging.getLogger(__name__)


class ExportFailed(OSError):
    """The table could not be written; the message says where, the detector's log why."""


def export_csv(
    export: Export, uri_prefix: str, namespace: str, service: str, now: datetime | None = None
) -> ExportedDataset:
    """Write ``export`` as ``<uri_prefix>/<namespace>-<service>-<UTC time>-<hash prefix>.csv``
    (``uri_prefix`` checked against the artifact roots by the caller); :class:`ExportFailed` when the
    file system refuses, with its own words only in the log."""
    frame = pd.DataFrame(export.columns, columns=[*export.features, export.target_column])
    payload = frame.to_csv(index=False, lineterminator="\n").encode()
    content_hash = dataset_hash(pd.read_csv(io.BytesIO(payload)))
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = content_hash.removeprefix("sha256:")[:12]
    uri = f"{uri_prefix.rstrip('/')}/{namespace}-{service}-{stamp}-{digest}.csv"
    try:
        with fsspec.open(uri, "wb", auto_mkdir=True) as stream:
            stream.write(payload)
    except Exception as exc:  # fsspec raises what each filesystem raises (OSError, ValueError, ...)
        logger.warning("writing %s failed: %s: %.200s", uri, type(exc).__name__, str(exc))
        raise ExportFailed(f"cannot write {uri} (the detector's log says why)") from None
    return ExportedDataset(uri=uri, hash=content_hash, rows=export.rows, labelled=export.labelled)
