"""s3:// references and exports, against a local S3 API server (moto's, bound to 127.0.0.1).

The detector runs as a process and finds the server the way it finds any S3-compatible store (MinIO,
Ceph): through the standard AWS_ENDPOINT_URL variable and the credentials in the environment.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from conftest import FAST_ARGS, Detector, numeric_rows, start_detector, stop_detector

BUCKET = "modelloop-detector-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def s3_detector(s3_endpoint: str, s3: Any) -> Iterator[Detector]:
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": f"s3://{BUCKET}/team",
    }
    running = start_detector(*FAST_ARGS, "--no-mmd", env=env)
    yield running
    stop_detector(running)


def test_an_s3_reference_registers_and_the_window_exports_to_s3(s3: Any, s3_detector: Detector) -> None:
    frame = pd.DataFrame(numeric_rows(80, seed=1), columns=["a", "b", "c", "d"])
    s3.put_object(Bucket=BUCKET, Key="team/iris/3/reference.csv", Body=frame.to_csv(index=False).encode())
    reply = s3_detector.register(
        "iris",
        {"model": "iris", "versions": {"3": {"referenceUri": f"s3://{BUCKET}/team/iris/3/reference.csv"}}},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["versions"]["3"] == {"referenceRows": 80, "features": ["a", "b", "c", "d"]}
    s3_detector.send_rows(numeric_rows(20, seed=2), [0] * 20, prefix="s3", service="iris")
    exported = s3_detector.client.post("/v1/export/ml/iris", json={"uriPrefix": f"s3://{BUCKET}/team/recent"})
    assert exported.status_code == 200, exported.text
    uri = exported.json()["uri"]
    assert uri.startswith(f"s3://{BUCKET}/team/recent/ml-iris-")
    body = s3.get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    assert len(pd.read_csv(io.BytesIO(body))) == 20


def test_another_prefix_of_the_bucket_is_refused(s3: Any, s3_detector: Detector) -> None:
    s3.put_object(Bucket=BUCKET, Key="other-team/reference.csv", Body=b"a\n1\n")
    for uri in (f"s3://{BUCKET}/other-team/reference.csv", f"s3://{BUCKET}/team/../other-team/reference.csv"):
        reply = s3_detector.register("other", {"model": "m", "versions": {"1": {"referenceUri": uri}}})
        assert reply.status_code == 403, reply.text


def test_a_missing_s3_object_is_a_clear_422(s3_detector: Detector) -> None:
    reply = s3_detector.register(
        "missing", {"model": "m", "versions": {"1": {"referenceUri": f"s3://{BUCKET}/team/none.csv"}}}
    )
    assert reply.status_code == 422 and "no such file" in reply.json()["errors"]["1"]
