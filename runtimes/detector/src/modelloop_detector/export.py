"""Writing a window's rows as a training table, with the table's content hash.

The hash is ``modelloop_contracts``' ``dataset_hash``, the trainer's: the trainer reads the exported file
with ``pandas.read_csv`` and hashes that frame, so the detector hashes the frame that ``read_csv`` gives
back for the same bytes. The tests check that the trainer, in its own environment, gets the same value.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import fsspec
import pandas as pd
from modelloop_contracts import ExportedDataset, dataset_hash

from modelloop_detector.service import Export


def export_csv(
    export: Export, uri_prefix: str, namespace: str, service: str, now: datetime | None = None
) -> ExportedDataset:
    """Write ``export`` as ``<uri_prefix>/<namespace>-<service>-<UTC time>-<hash prefix>.csv``."""
    frame = pd.DataFrame(export.columns, columns=[*export.features, export.target_column])
    payload = frame.to_csv(index=False, lineterminator="\n").encode()
    content_hash = dataset_hash(pd.read_csv(io.BytesIO(payload)))
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = content_hash.removeprefix("sha256:")[:12]
    uri = f"{uri_prefix.rstrip('/')}/{namespace}-{service}-{stamp}-{digest}.csv"
    with fsspec.open(uri, "wb", auto_mkdir=True) as stream:
        stream.write(payload)
    return ExportedDataset(uri=uri, hash=content_hash, rows=export.rows, labelled=export.labelled)
