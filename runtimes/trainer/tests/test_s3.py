"""s3:// datasets and outputs, against a local S3 API server.

Real S3 cannot be reached from here or from CI, so moto's S3 server, bound to 127.0.0.1,
stands in for it. The trainer runs as a process and finds the server the way it would find
any S3-compatible store (MinIO, Ceph): through the standard AWS_ENDPOINT_URL variable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import joblib
import pandas as pd
import pytest
from modelloop_contracts import dataset_hash
from moto.server import ThreadedMotoServer

BUCKET = "modelloop-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    client.create_bucket(Bucket=BUCKET)
    return client


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def modelloop_train(endpoint: str, **contract: str) -> subprocess.CompletedProcess[str]:
    """Run the command with the contract's variables, the test credentials and the local endpoint."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MODELLOOP_", "AWS_"))}
    env.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, **contract)
    command = str(Path(sys.executable).with_name("modelloop-train"))
    return subprocess.run([command], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_dataset_on_s3_trains_and_the_artifacts_land_on_s3(
    s3: Any, s3_endpoint: str, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    s3.put_object(Bucket=BUCKET, Key="datasets/iris.csv", Body=iris_frame.to_csv(index=False).encode())
    termination_log = tmp_path / "termination-log"
    process = modelloop_train(
        s3_endpoint,
        MODELLOOP_DATASET_URI=f"s3://{BUCKET}/datasets/iris.csv",
        MODELLOOP_DATASET_FORMAT="csv",
        MODELLOOP_TARGET_COLUMN="species",
        MODELLOOP_DATASET_HASH=dataset_hash(iris_frame),
        MODELLOOP_PARAMS=json.dumps({"n_estimators": 10}),
        MODELLOOP_OUTPUT_URI=f"s3://{BUCKET}/artifacts/iris/iris-rf",
        MODELLOOP_RESULT_PATH=str(termination_log),
    )
    assert process.returncode == 0, process.stderr

    result = json.loads(termination_log.read_text())
    assert result["artifactUri"] == f"s3://{BUCKET}/artifacts/iris/iris-rf/model.joblib"
    assert result["referenceUri"] == f"s3://{BUCKET}/artifacts/iris/iris-rf/reference.csv"
    assert result["holdoutUri"] == f"s3://{BUCKET}/artifacts/iris/iris-rf/holdout.csv"
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="artifacts/iris/iris-rf/")
    assert sorted(item["Key"].rsplit("/", 1)[1] for item in listing["Contents"]) == [
        "holdout.csv",
        "metrics.json",
        "model.joblib",
        "reference.csv",
        "reference_predictions.csv",
        "result.json",
    ]
    model_bytes = s3.get_object(Bucket=BUCKET, Key="artifacts/iris/iris-rf/model.joblib")["Body"].read()
    assert result["artifactDigest"] == "sha256:" + hashlib.sha256(model_bytes).hexdigest()
    model = joblib.load(io.BytesIO(model_bytes))
    assert set(model.predict(iris_frame.drop(columns=["species"]))) <= {"setosa", "versicolor", "virginica"}


def test_a_missing_s3_object_is_dataset_unavailable(s3: Any, s3_endpoint: str, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    process = modelloop_train(
        s3_endpoint,
        MODELLOOP_DATASET_URI=f"s3://{BUCKET}/datasets/absent.csv",
        MODELLOOP_TARGET_COLUMN="y",
        MODELLOOP_OUTPUT_URI=f"s3://{BUCKET}/artifacts/absent",
        MODELLOOP_RESULT_PATH=str(termination_log),
    )
    assert process.returncode == 1
    result = json.loads(termination_log.read_text())
    assert result["reason"] == "DatasetUnavailable"
    assert f"s3://{BUCKET}/datasets/absent.csv" in result["message"]
