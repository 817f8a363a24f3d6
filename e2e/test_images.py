"""modelloop's images (hack/images.sh), run as a pod runs them: from the OCI archives that would be pushed,
each from its own read-only root filesystem as its own unprivileged user (hack/run_image.py, bubblewrap),
with the local control plane and a model that the real trainer made.

Pods under kwok run nothing, so the images run here: the operator's reconciles the quickstart on the local
control plane, both model servers serve a trained model over HTTP, and every built image is checked for
what a production image must not have (root, a writable root filesystem, compilers, caches, tests)."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Cluster, apply_quickstart_until_ready, condition, free_port, wait_for
from e2e.models import Trained
from e2e.serving import answers_ok, file_tail, initialize_storage, terminate_process
from e2e.test_trainingrun import training_run
from modelloop.api import TrainingRunSpec
from modelloop.training.job import output_uri, render_job
from modelloop.training.result import parse_result

IMAGES_DIR = Path(os.environ.get("MODELLOOP_IMAGES_DIR") or ROOT / ".images")
RUN_IMAGE = ROOT / "hack" / "run_image.py"
BUILD_IMAGES = ROOT / "hack" / "images.sh"
ALL_IMAGES = ("operator", "trainer", "server", "seldon", "detector")
IMAGE_USER = "65532:65532"
# What an image's user may write if its root filesystem were writable: the sticky scratch folders.
SCRATCH = {"tmp", "var/tmp", "run/lock"}
COMPILERS = {"gcc", "cc", "c++", "g++", "clang", "clang++", "tcc", "cc1", "cc1plus"}


def archive(image: str) -> Path:
    return IMAGES_DIR / f"{image}.oci.tar"


def needs(image: str) -> pytest.MarkDecorator:
    """Skip a test whose image hack/images.sh has not built (`make images-test` builds the tested ones)."""
    if shutil.which("bwrap") is None:
        return pytest.mark.skip(reason="bubblewrap is not installed (hack/image-tools.sh installs it)")
    return pytest.mark.skipif(
        not archive(image).exists(),
        reason=f"the {image} image is not built: hack/images.sh {image} (make images-test builds three)",
    )


@functools.cache
def inspect(image: str) -> dict[str, Any]:
    """The image's digest, configuration and unpacked root filesystem (hack/run_image.py --inspect)."""
    result = subprocess.run(
        [sys.executable, str(RUN_IMAGE), "--inspect", image], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)
    return info


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A folder for what the images mount, which their user can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="modelloop-images-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def hand_to_image_user(path: Path) -> Path:
    """Give ``path`` (and what it holds) to the images' user, as a pod's fsGroup or a Secret's mode would."""
    if os.geteuid() == 0:
        uid, gid = (int(part) for part in IMAGE_USER.split(":"))
        for item in [path, *(path.rglob("*") if path.is_dir() else ())]:
            os.chown(item, uid, gid, follow_symlinks=False)
    return path


@contextlib.contextmanager
def running_image(
    image: str,
    args: Sequence[str],
    log_path: Path,
    *,
    mounts: Mapping[Path, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the image's entrypoint with ``args`` (its command replaced, as a pod's args replace it), the
    ``mounts`` read-only and ``env`` added; stop its process group at the end and print its log."""
    command = [sys.executable, str(RUN_IMAGE)]
    for source, destination in (mounts or {}).items():
        command += ["--ro-bind", f"{source}:{destination}"]
    for name, value in (env or {}).items():
        command += ["--env", f"{name}={value}"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, image, "--", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        terminate_process(process, timeout=30)
        sys.stdout.write(f"\n--- {image} image log ({log_path}) ---\n{file_tail(log_path, 20000)}\n")


def wait_answering(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 180) -> None:
    wait_for(lambda: process.poll() is not None or answers_ok(url), timeout=timeout, interval=0.5, what=url)
    assert process.poll() is None, (
        f"the image's process exited ({process.returncode}):\n{file_tail(log_path)}"
    )


def session_uids(session: int) -> dict[int, tuple[str, set[int]]]:
    """Every process of a session (the image's, started in its own), by pid: its command and its real,
    effective, saved and filesystem uids as the host sees them."""
    found: dict[int, tuple[str, set[int]]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:  # after ")": state, ppid, pgrp, session
                continue
            uid_line = next(
                line for line in (proc / "status").read_text().splitlines() if line.startswith("Uid:")
            )
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(proc.name)] = (command, {int(uid) for uid in uid_line.split()[1:]})
    return found


def post(url: str, body: Mapping[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def reference_sample(model: Trained) -> tuple[list[list[float]], list[str]]:
    """The rows the trainer kept beside the model (reference.csv) and the model's own predictions of
    them (reference_predictions.csv), as the trainer wrote them."""
    folder = Path(urllib.parse.unquote(urllib.parse.urlparse(model.uri).path)).parent
    with (folder / "reference.csv").open() as file:
        rows = [[float(value) for value in row] for row in list(csv.reader(file))[1:]]
    with (folder / "reference_predictions.csv").open() as file:
        predictions = [row["prediction"] for row in csv.DictReader(file)]
    assert rows and len(rows) == len(predictions)
    return rows, predictions


def model_folder(model: Trained, shared: Path, name: str) -> Path:
    """What the storage initializer puts into /mnt/models, readable by the images' user."""
    folder = shared / name
    initialize_storage(model.uri, folder)
    folder.chmod(0o755)
    return hand_to_image_user(folder)


@needs("operator")
def test_operator_image_reconciles_the_quickstart_as_its_own_user_from_a_read_only_root(
    cluster: Cluster, namespace: str, shared: Path, tmp_path: Path
) -> None:
    kubeconfig = shared / "kubeconfig"
    kubeconfig.write_text(cluster.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
    kubeconfig.chmod(0o600)
    hand_to_image_user(kubeconfig)
    port = free_port()
    log_path = tmp_path / "operator.log"
    args = ["run", "--namespace", namespace, "--liveness", f"http://127.0.0.1:{port}/healthz"]
    with running_image(
        "operator",
        args,
        log_path,
        mounts={kubeconfig: "/var/run/modelloop/kubeconfig"},
        env={"KUBECONFIG": "/var/run/modelloop/kubeconfig"},
    ) as operator:
        wait_answering(operator, f"http://127.0.0.1:{port}/healthz", log_path)
        processes = session_uids(operator.pid)
        apply_quickstart_until_ready(cluster, namespace)
        version = wait_for(
            lambda: (
                (obj := cluster.get("modelversion", "iris-v1", namespace)).get("status", {}).get("phase")
                == "Validated"
                and obj
            ),
            timeout=60,
            what="iris-v1 Validated",
        )

    ready = condition(version, "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "ChecksPassed", ready
    assert version["status"]["observedGeneration"] == version["metadata"]["generation"]
    # Every process of the image ran as its user, also as the host sees it.
    assert any("modelloop run" in command for command, _ in processes.values()), processes
    assert all(uids == {65532} for _, uids in processes.values()), processes
    log = log_path.read_text(errors="replace")
    for trouble in ("Forbidden", "Read-only file system", "Permission denied", "Traceback"):
        assert trouble not in log, log[-5000:]


@needs("server")
@pytest.mark.parametrize("name", ["iris-a", "iris-b"])  # scikit-learn's joblib; a TorchMLP's ONNX export
def test_server_image_serves_a_trained_model_over_kserve_v1(
    trained: dict[str, Trained], shared: Path, tmp_path: Path, name: str
) -> None:
    model = trained[name]
    rows, predictions = reference_sample(model)
    models = model_folder(model, shared, f"server-models-{name}")
    port = free_port()
    log_path = tmp_path / "server.log"
    # The ClusterServingRuntime's args, on a free port of this machine (the image shares its network).
    args = ["--model_name=iris", "--model_dir=/mnt/models", f"--http_port={port}", "--model_version=1"]
    with running_image("server", args, log_path, mounts={models: "/mnt/models"}) as server:
        wait_answering(server, f"http://127.0.0.1:{port}/v2/health/ready", log_path)
        answer = post(f"http://127.0.0.1:{port}/v1/models/iris:predict", {"instances": rows})
        processes = session_uids(server.pid)

    assert [str(p) for p in answer["predictions"]] == predictions
    assert answer["model_version"] == "1"
    assert all(uids == {65532} for _, uids in processes.values()), processes


@needs("detector")
def test_detector_image_ingests_a_cloudevent_and_counts_it_in_its_metrics(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "detector.log"
    # What KServe's agent sends for one logged request (binary mode: attributes in ce-* headers).
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "image-test-1",
        "ce-source": "http://localhost:9081/",
        "ce-type": "org.kubeflow.serving.inference.request",
        "ce-inferenceservicename": "iris",
        "ce-namespace": "ml",
        "ce-component": "predictor",
        "ce-endpoint": "default",
    }
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    with running_image("detector", [f"--port={port}"], log_path) as detector:
        wait_answering(detector, f"http://127.0.0.1:{port}/metrics", log_path)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        processes = session_uids(detector.pid)

    assert 200 <= status < 300, status
    assert 'modelloop_detector_events_total{type="request"} 1.0' in metrics, metrics
    assert all(uids == {65532} for _, uids in processes.values()), processes


@needs("seldon")
def test_seldon_image_serves_a_trained_model_over_seldons_protocol(
    trained: dict[str, Trained], shared: Path, tmp_path: Path
) -> None:
    model = trained["iris-a"]
    rows, predictions = reference_sample(model)
    models = model_folder(model, shared, "seldon-models")
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "seldon.log"
    # What Seldon's controller gives a graph node (e2e/seldon.py), on free ports of this machine.
    env = {
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(port),
        "PREDICTIVE_UNIT_SERVICE_PORT": str(port),
        "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(free_port()),
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics_port),
        "PREDICTIVE_UNIT_PARAMETERS": json.dumps(
            [
                {"name": "model_uri", "type": "STRING", "value": "/mnt/models"},
                {"name": "model_version", "type": "STRING", "value": "1"},
            ]
        ),
        "PREDICTIVE_UNIT_ID": "model",
        "PREDICTOR_ID": "v1",
        "SELDON_DEPLOYMENT_ID": "iris",
    }
    with running_image(
        "seldon", ["--service-type", "MODEL"], log_path, mounts={models: "/mnt/models"}, env=env
    ) as server:
        wait_answering(server, f"http://127.0.0.1:{port}/health/ping", log_path)
        answer = post(f"http://127.0.0.1:{port}/api/v1.0/predictions", {"data": {"ndarray": rows}})
        metrics_answer = answers_ok(f"http://127.0.0.1:{metrics_port}/prometheus")
        processes = session_uids(server.pid)

    assert [str(p) for p in answer["data"]["ndarray"]] == predictions
    assert metrics_answer
    assert all(uids == {65532} for _, uids in processes.values()), processes


@needs("trainer")
@needs("server")
def test_trainer_image_trains_a_torch_mlp_as_its_pod_is_rendered_and_the_server_image_serves_it(
    shared: Path, tmp_path: Path
) -> None:
    artifacts = shared / "trainer-artifacts"
    artifacts.mkdir(mode=0o755)
    termination_log = shared / "termination-log"
    termination_log.touch()
    hand_to_image_user(artifacts)
    hand_to_image_user(termination_log)
    run = training_run("mlp", Path("/var/lib/modelloop/artifacts"), hold=False)
    run["spec"]["params"] = {"estimator": "TorchMLP", "epochs": 20, "seed": 1}
    run["metadata"].update(namespace="training", uid="00000000-0000-0000-0000-000000000001")
    job = render_job(run, TrainingRunSpec.model_validate(run["spec"]), "file:///unused")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    command = [*(container.get("command") or ()), *(container.get("args") or ())]
    # The image's own CMD when the pod names none; the entrypoint is replaced by the pod's command.
    result = subprocess.run(
        [
            *(sys.executable, str(RUN_IMAGE), "--entrypoint", command[0] if command else ""),
            *("--bind", f"{artifacts}:/var/lib/modelloop/artifacts"),
            *("--bind", f"{termination_log}:{container['terminationMessagePath']}"),
            *(f"--env={name}={value}" for name, value in env.items()),
            "trainer",
            *command[1:],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trained = parse_result(termination_log.read_text())
    assert trained is not None and trained.succeeded, termination_log.read_text()
    folder = output_uri(TrainingRunSpec.model_validate(run["spec"]), run, "file:///unused")
    assert (
        trained.artifact_uri
        == f"{folder}/model.onnx"
        == "file:///var/lib/modelloop/artifacts/mlp-00000000/model.onnx"
    )
    # The storage initializer's copy of the artifact, served by the server image.
    model = Trained(f"file://{artifacts}/mlp-00000000/model.onnx", dict(trained.metrics))
    rows, predictions = reference_sample(model)
    models = model_folder(model, shared, "onnx-models")
    port = free_port()
    log_path = tmp_path / "server.log"
    args = ["--model_name=iris", "--model_dir=/mnt/models", f"--http_port={port}"]
    with running_image("server", args, log_path, mounts={models: "/mnt/models"}) as server:
        wait_answering(server, f"http://127.0.0.1:{port}/v2/health/ready", log_path)
        answer = post(f"http://127.0.0.1:{port}/v1/models/iris:predict", {"instances": rows})

    assert sorted(path.name for path in models.iterdir()) == ["model.onnx"]
    assert [str(p) for p in answer["predictions"]] == predictions


INSIDE = """
import json, os, shutil, site, sys
def refused(path):
    try:
        with open(os.path.join(path, ".modelloop-write-test"), "w"):
            return False
    except OSError as error:
        return error.strerror
print(json.dumps({
    "uids": sorted({*os.getresuid(), *os.getresgid()}),
    "groups": os.getgroups(),
    "python": sys.executable,
    "refused": {p: refused(p) for p in ["/", "/etc", "/usr/lib", "/opt/modelloop", *site.getsitepackages()]},
    "tmp_writable": not refused("/tmp"),
    "compilers": [c for c in ["gcc", "cc", "c++", "g++", "clang"] if shutil.which(c)],
}))
"""


@pytest.mark.parametrize("image", [pytest.param(i, marks=needs(i)) for i in ALL_IMAGES])
def test_image_runs_as_its_unprivileged_user_on_a_read_only_root_without_compilers_caches_or_tests(
    image: str,
) -> None:
    info = inspect(image)
    assert info["user"] == IMAGE_USER
    assert info["env"]["PATH"].startswith("/opt/modelloop/bin:")
    result = subprocess.run(
        [sys.executable, str(RUN_IMAGE), "--entrypoint", "python3", image, "-c", INSIDE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    inside = json.loads(result.stdout)

    assert inside["uids"] == [65532]
    assert inside["groups"] in ([], [65532])
    assert inside["python"] == "/opt/modelloop/bin/python3"
    assert all(inside["refused"].values()), inside["refused"]
    assert inside["tmp_writable"]
    assert inside["compilers"] == []
    # The root filesystem as shipped: nothing the user may write outside the sticky scratch folders (the
    # pod's read-only root filesystem aside), no compiler, no cache, no test folder.
    rootfs = Path(info["rootfs"])
    writable, compilers, caches, tests = [], [], [], []
    for folder, dirs, files in os.walk(rootfs):
        relative = Path(folder).relative_to(rootfs)
        for name in [*dirs, *files]:
            path = Path(folder) / name
            mode = path.lstat()
            if stat.S_ISLNK(mode.st_mode):
                continue
            if (mode.st_uid == 65532 or mode.st_mode & stat.S_IWOTH) and str(relative / name) not in SCRATCH:
                writable.append(str(relative / name))
            executable = stat.S_ISREG(mode.st_mode) and mode.st_mode & 0o111
            if executable and (name in COMPILERS or name.startswith(("gcc-", "g++-", "x86_64-linux-gnu-g"))):
                compilers.append(str(relative / name))
        caches += [str(relative / d) for d in dirs if d == ".cache"]
        tests += [str(relative / d) for d in dirs if d in ("tests", "test")]
    assert writable == [], writable[:20]
    assert compilers == [], compilers
    assert caches == [], caches
    assert tests == [], tests[:20]
    # The model servers run the trainer's MLP from ONNX: no PyTorch, no CUDA libraries in their images.
    if image in ("server", "seldon", "operator"):
        site = rootfs / "opt" / "modelloop" / "lib" / "python3.11" / "site-packages"
        heavy = sorted(p.name for p in site.iterdir() if p.name.startswith(("torch", "nvidia", "triton")))
        assert heavy == [], heavy


@pytest.mark.skipif(
    any(not archive(i).exists() for i in ("operator", "server")),
    reason="the operator and server images are not built (make images-test)",
)
def test_digests_values_pin_the_chart_to_the_archives_that_would_be_pushed(tmp_path: Path) -> None:
    helm_dir = subprocess.run(
        [str(ROOT / "hack" / "build-helm.sh"), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    helm = Path(helm_dir) / "helm"
    if not helm.exists():
        pytest.skip("helm is not built: run hack/build-helm.sh")
    values = tmp_path / "values-digests.yaml"
    built = [i for i in ("operator", "server", "seldon", "detector") if archive(i).exists()]
    # The archives as they are (the tested ones), not a rebuild of what changed since.
    result = subprocess.run(
        [str(BUILD_IMAGES), "--no-build", "--values", str(values), *built],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    rendered = subprocess.run(
        [
            *(str(helm), "template", "mlh", str(ROOT / "charts" / "modelloop"), "-f", str(values)),
            *("--set", "servingRuntime.enabled=true,detector.enabled=true"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(tmp_path / "helm"),
            "HELM_CONFIG_HOME": str(tmp_path / "helm"),
        },
    )
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    images = {
        c["image"]
        for d in documents
        for c in (d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])
        + (d.get("spec", {}).get("containers") or [])
    }
    assert f"ghcr.io/modelloop/operator@{inspect('operator')['digest']}" in images, images
    assert f"ghcr.io/modelloop/server@{inspect('server')['digest']}" in images, images
    if "detector" in built:
        assert f"ghcr.io/modelloop/detector@{inspect('detector')['digest']}" in images, images
    if "seldon" in built:
        assert f"ghcr.io/modelloop/seldon@{inspect('seldon')['digest']}" in values.read_text()


def test_the_kustomize_component_pins_the_manifests_to_the_archives_that_would_be_pushed(
    cluster: Cluster, tmp_path: Path
) -> None:
    built = [i for i in ("operator", "detector") if archive(i).exists()]
    if not built:
        pytest.skip("neither the operator image nor the detector image is built: make images-test")
    component = tmp_path / "images"
    result = subprocess.run(
        [str(BUILD_IMAGES), "--no-build", "--kustomize", str(component), *built],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # A user's kustomization: the base and the detector, and the component beside them (kustomize takes
    # only relative paths).
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    relative = functools.partial(os.path.relpath, start=overlay)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(ROOT / "manifests" / "base"), relative(ROOT / "manifests" / "detector")],
        "components": [relative(component)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    rendered = cluster.kubectl("kustomize", str(overlay)).stdout
    images = {
        c["image"]
        for d in yaml.safe_load_all(rendered)
        if d and d.get("kind") == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    for image in built:
        assert f"ghcr.io/modelloop/{image}@{inspect(image)['digest']}" in images, images
    if "detector" not in built:
        assert "ghcr.io/modelloop/detector:0.1.0" in images, images  # what it does not pin stays as it was
