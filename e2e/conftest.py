"""Fixtures of the e2e suite: one real control plane per run, a namespace per test, the operator as a
separate process started the way a user starts it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from e2e.harness import ROOT, SHARED_CRDS, Cluster, cluster_script, running_operator
from e2e.knative import KnativeServing, running_knative
from e2e.kserve import KServe, running_kserve
from e2e.models import Trained, train
from modelloop.api import GROUP, KINDS

# Overridable so that two suites (say, two checkouts) can each have their own control plane at once; each
# pytest-xdist worker (`make e2e` runs two, a test file each at a time) has its own as well.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_OWN = f"-{WORKER}" if WORKER else ""
E2E_STATE = Path((os.environ.get("MODELLOOP_E2E_DIR") or str(ROOT / ".cluster" / "e2e")) + _OWN)
E2E_CLUSTER_NAME = (os.environ.get("MODELLOOP_E2E_NAME") or "modelloop-e2e") + _OWN


# The files whose tests run Kubeflow Trainer's, JobSet's or Kueue's controllers: `make e2e` builds those
# (minutes, cold) in the background while the suite runs, and their tests wait for the build. pytest-xdist
# (--dist loadfile) hands out the files with the most tests first, so these two (five tests each) start
# after most of the suite's light, many-test files (five minutes in, in a warm run of the suite alone).
# Two other orders were measured in cold runs, and were slower (README, "Development"): every file longest
# first ran the heaviest files beside the engines' compile and the checks, each three to five times as long
# (one test missed its deadline); the heavy files after the many-test ones, longest first, ran them two at a
# time, each slower beside the other.
ENGINE_FILES = ("test_distributed.py", "test_engines.py")
ENGINE_BUILD_SECONDS = 1800
"""How long a test that needs the engines may take, waiting for their build included."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In one process (`make e2e E2E_PARALLEL=`), run the engine files last, so that their build has the
    whole suite's time (a stable sort: the order within is kept); pytest-xdist orders files its own way."""
    items.sort(key=lambda item: item.path.name in ENGINE_FILES)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Start the local control plane (its own state, apart from `make cluster`'s), install our CRDs and
    KServe's and Seldon Core's real ones, and tear it all down at the end, also when tests fail."""
    env = {
        **os.environ,
        "MODELLOOP_CLUSTER_DIR": str(E2E_STATE),
        "MODELLOOP_CLUSTER_NAME": E2E_CLUSTER_NAME,
    }
    bin_dir = Path(cluster_script("bin-dir", env=env).strip())
    try:
        # kwokctl takes the first free port it finds for the API server: two control planes starting at
        # the same moment (the workers of `make e2e`) would both take it. One starts at a time.
        with one_at_a_time(ROOT / ".cluster" / "e2e-up.lock"):
            cluster_script("up", env=env)
        c = Cluster(kubeconfig=E2E_STATE / "kubeconfig", bin_dir=bin_dir, state_dir=E2E_STATE)
        c.install_crds(*sorted((ROOT / "crds").glob("*.yaml")), what="modelloop's CRDs")
        # As a production install has it: the API server records who registered each ModelVersion.
        c.kubectl("apply", "-f", str(ROOT / "manifests" / "admission"))
        # Server-side apply: KServe's and Seldon's CRDs exceed client-side apply's annotation limit.
        third_party = subprocess.run(
            [sys.executable, str(ROOT / "hack" / "third_party_crds.py"), str(SHARED_CRDS)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        c.install_crds(input=third_party, what="the third-party CRDs")
        yield c
    finally:
        cluster_script("down", env=env)


@contextlib.contextmanager
def one_at_a_time(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (made if missing) while the block runs: across processes."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for it to be gone).

    Before it goes, every status in it is checked against its kind's pydantic status model: whatever
    the operator wrote during the test must be what the API says a status is."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    try:
        check_statuses(cluster, name)
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def check_statuses(cluster: Cluster, namespace: str) -> None:
    for info in KINDS:
        for obj in cluster.get(f"{info.plural}.{GROUP}", namespace=namespace)["items"]:
            status = obj.get("status") or {}
            try:
                info.status_model.model_validate(status)
            except pydantic.ValidationError as error:
                raise AssertionError(
                    f"{info.kind} {obj['metadata']['name']} has a status its model refuses: {error}"
                ) from error


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`modelloop run` as its own process, watching the test's namespace; its log is printed at the end."""
    with running_operator(cluster, namespace, tmp_path / "operator.log") as process:
        yield process


@pytest.fixture(scope="session")
def kserve(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServe]:
    """KServe's real controller and its webhooks, started on first use and kept for the session. From
    then on it reconciles every InferenceService in the cluster, as KServe in a real cluster does."""
    with running_kserve(cluster, tmp_path_factory.mktemp("kserve")) as running:
        yield running


@pytest.fixture
def knative(cluster: Cluster, namespace: str) -> Iterator[KnativeServing]:
    """The stand-in for Knative Serving's controller, over the test's namespace."""
    with running_knative(cluster, [namespace]) as serving:
        yield serving


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """Three models trained once per run by the real trainer, with exactly the environment the operator
    renders into a training pod: two good iris models (the second a TorchMLP, which the model servers
    serve from its ONNX export), and one trained on the wine data (13 features), which cannot answer
    iris requests — a retrained model whose inputs changed."""
    workdir = tmp_path_factory.mktemp("trained")
    return {
        "iris-a": train(workdir, "iris-a", "iris", seed=1),
        "iris-b": train(workdir, "iris-b", "iris", seed=2, params={"estimator": "TorchMLP", "epochs": 60}),
        "wine": train(workdir, "wine", "wine", seed=3),
    }
