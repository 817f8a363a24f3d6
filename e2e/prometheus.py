"""A real Prometheus server for the e2e suite: Debian's ``prometheus`` binary, run as its own process.

It scrapes every second the targets that :meth:`Prometheus.set_targets` writes into a file_sd file
(Prometheus watches that file and re-reads it, at the latest after a second), and keeps its storage
under the given folder. Its address is chosen once: :meth:`Prometheus.stop` then :meth:`Prometheus.start`
brings it back at the same URL, with the same data, so that an operator configured with that URL
reconnects as it would to a restarted Prometheus in a cluster.

:meth:`Prometheus.query` tells three answers apart: a number, ``None`` (Prometheus answered, and the
query had no data), and :class:`PrometheusUnavailable` (no answer at all: stopped, not ready, unreachable).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e.harness import free_port, wait_for

PROMETHEUS_BINARY = "prometheus"  # Debian's package (`make prometheus-bin`) puts it in /usr/bin
SCRAPE_INTERVAL = "1s"
JOB = "modelloop-e2e"

Target = tuple[str, Mapping[str, str]]
"""A scrape target: ``host:port`` and the labels Prometheus adds to every series scraped from it."""


class PrometheusUnavailable(ConnectionError):
    """Prometheus did not answer: it is stopped, not ready yet, or unreachable."""


class PrometheusQueryError(RuntimeError):
    """Prometheus answered, and refused the query (bad PromQL, or more than one series for one number)."""


class Prometheus:
    """One Prometheus process with its configuration, targets file, storage and log under ``workdir``."""

    def __init__(self, workdir: Path, binary: str = PROMETHEUS_BINARY) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.targets_path = workdir / "targets.json"
        self.storage_path = workdir / "data"
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, the same across restarts, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Write the configuration (keeping the current targets) and start Prometheus; return once ready."""
        if self.running:
            return
        executable = shutil.which(self.binary)
        if executable is None:
            raise FileNotFoundError(
                f"{self.binary} is not on PATH; `make prometheus-bin` installs Debian's package"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_path.mkdir(exist_ok=True)
        if not self.targets_path.exists():
            self.set_targets([])
        self.config_path.write_text(json.dumps(self._config(), indent=2))  # JSON is YAML
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.storage_path}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, and wait for it to exit (killing it after ``timeout`` seconds)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, timeout: float = 60) -> None:
        """Stop, then start again at the same URL with the same storage."""
        self.stop()
        self.start(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll ``/-/ready`` until it answers 200; fail with the log's tail if the process exits first."""

        def ready() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self._process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.2, what=f"Prometheus at {self.url} to be ready")

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the scrape targets; Prometheus notices the file change by itself. Label names must be
        valid Prometheus label names (see :func:`label_name`)."""
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: Prometheus must never read a half-written file.
        partial = self.targets_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(groups, indent=2))
        os.replace(partial, self.targets_path)

    def query(self, expr: str) -> float | None:
        """The instant value of ``expr``: a number, or ``None`` when the result is empty. Raise
        :class:`PrometheusUnavailable` when Prometheus does not answer, :class:`PrometheusQueryError` when
        it refuses the query or the result has more than one series."""
        series = self.query_series(expr)
        if not series:
            return None
        if len(series) > 1:
            raise PrometheusQueryError(f"{expr!r} returned {len(series)} series, not one: {series}")
        return series[0][1]

    def query_series(self, expr: str, at: str | None = None) -> list[tuple[dict[str, str], float]]:
        """Every series of the instant query ``expr`` (now, or ``at``: RFC 3339 or Unix seconds) as
        (labels, value); a scalar has empty labels."""
        data = self._api("query", {"query": expr} if at is None else {"query": expr, "time": at})
        result = data["result"]
        if data["resultType"] == "scalar":
            return [({}, float(result[1]))]
        if data["resultType"] != "vector":
            raise PrometheusQueryError(f"{expr!r} returned a {data['resultType']}, not a vector or scalar")
        return [(dict(sample["metric"]), float(sample["value"][1])) for sample in result]

    def active_targets(self) -> list[dict[str, Any]]:
        """The active targets (``/api/v1/targets``): labels, ``health`` (up, down, unknown), lastError."""
        targets: list[dict[str, Any]] = self._api("targets", {"state": "active"})["activeTargets"]
        return targets

    def targets_up(self, addresses: Sequence[str]) -> bool:
        """Whether every one of ``addresses`` is an active target whose last scrape succeeded."""
        health = {t["labels"].get("instance"): t.get("health") for t in self.active_targets()}
        return all(health.get(address) == "up" for address in addresses)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of Prometheus's log (all runs)."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _api(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 503:
                raise PrometheusUnavailable(f"Prometheus at {self.url} is not ready (503)") from error
            try:
                detail = json.loads(error.read()).get("error", "")
            except ValueError:
                detail = ""
            raise PrometheusQueryError(f"Prometheus refused {params} ({error.code}): {detail}") from error
        except OSError as error:  # connection refused or reset, timeout
            raise PrometheusUnavailable(f"Prometheus at {self.url} does not answer: {error}") from error
        if body.get("status") != "success":
            raise PrometheusQueryError(f"Prometheus refused {params}: {body.get('error')}")
        return body["data"]

    def _config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    # The model server's own labels (model, version) win over a pod label of the same name.
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
                }
            ],
        }


def label_name(name: str) -> str:
    """A Kubernetes label key as a Prometheus label name, as Prometheus's Kubernetes discovery writes it:
    every character outside ``[a-zA-Z0-9_]`` becomes ``_`` (``serving.kserve.io/inferenceservice`` →
    ``serving_kserve_io_inferenceservice``)."""
    sanitised = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    return f"_{sanitised}" if sanitised[:1].isdigit() else sanitised


def is_nan(value: float | None) -> bool:
    """Whether a query's value is NaN (e.g. a ratio of two rates over a window with no requests)."""
    return value is not None and math.isnan(value)


@contextlib.contextmanager
def running_prometheus(workdir: Path) -> Iterator[Prometheus]:
    """A started, ready Prometheus; stopped at the end, also when the block fails (its log then printed)."""
    prometheus = Prometheus(workdir)
    prometheus.start()
    try:
        yield prometheus
    except BaseException:
        print(f"\n--- prometheus log ({prometheus.log_path}) ---\n{prometheus.log_tail()}")
        raise
    finally:
        prometheus.stop()
