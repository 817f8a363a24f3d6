"""The drift detector's resident memory: idle, with 10 KS/Chi-square services, then with one MMD service.

Starts a real ``modelloop-detector`` process (from the environment this script runs in), registers
services over HTTP and reads the process's RSS from /proc after each step (Linux).

    .venvs/detector/bin/python bench/detector_memory.py [--services 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd


def rss_mib(pid: int) -> float:
    """The process's resident set size, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def call(url: str, method: str = "GET", body: object = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return int(answer.status)


def settle(pid: int) -> float:
    """RSS once it stops moving (two reads 0.5 s apart within 1 MiB), at most 10 s."""
    deadline, last = time.monotonic() + 10, rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mib(pid)
        if abs(now - last) < 1:
            return now
        last = now
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10, help="KS/Chi-square services to register")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="detector-memory-"))
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(1000, 4)), columns=["a", "b", "c", "d"])
    frame["colour"] = rng.choice(["red", "green", "blue"], size=1000)
    frame.to_csv(folder / "reference.csv", index=False)
    reference = (folder / "reference.csv").as_uri()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        str(Path(sys.executable).with_name("modelloop-detector")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "MODELLOOP_DETECTOR_ARTIFACT_ROOTS": folder.as_uri(), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([*command, "--device", "cpu"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if call(f"{url}/healthz") == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the detector did not start") from None
                time.sleep(0.2)
        idle = settle(process.pid)
        for index in range(args.services):
            body = {"model": "m", "versions": {"1": {"referenceUri": reference}}, "categorical": ["colour"]}
            call(f"{url}/v1/services/ml/svc-{index}", "PUT", body)
        light = settle(process.pid)
        body = {"model": "m", "versions": {"1": {"referenceUri": reference}}, "mmd": True}
        call(f"{url}/v1/services/ml/mmd", "PUT", body)
        heavy = settle(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    print(f"idle:                                  {idle:7.0f} MiB")
    print(f"{args.services} KS/Chi-square services:             {light:7.0f} MiB")
    print(f"... and one MMD service (PyTorch):     {heavy:7.0f} MiB")


if __name__ == "__main__":
    main()
