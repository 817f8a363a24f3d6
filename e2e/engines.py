"""The real controllers of distributed training on the e2e control plane: JobSet (v0.11.1), Kubeflow Trainer
(v2.2.0) and Kueue (v0.17.0), each built from its Go module by hack/build-training-engines.sh and run as a
process, with its admission webhooks registered by URL (``https://127.0.0.1:<port>``: the API server cannot
reach Services here) and a self-signed serving certificate as their caBundle.

Nothing is installed by the session: each context manager installs its own CRDs (server-side, from
../shared/crds), namespace and configuration file, starts the controller with leader election off and its
metrics and health endpoints on free ports, registers its webhooks, and returns only once a server-side dry
run shows the webhooks acting. On exit the webhook configurations go first (a stopped controller must not
block admission), then the process; the CRDs stay (objects of theirs may outlive a test).

The webhook definitions below are the controllers' own (paths, rules, failure policies and selectors of
their config/ manifests at those versions), written out here as data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import ROOT, SHARED_CRDS, Cluster, stop_process, wait_for
from e2e.kserve import answers_tls, free_ports, make_serving_certificate

BINARIES = ("trainer-controller-manager", "jobset", "kueue")
JOBSET_CRDS = SHARED_CRDS / "jobset"
TRAINER_CRDS = SHARED_CRDS / "kubeflow-trainer"
KUEUE_CRDS = SHARED_CRDS / "kueue"
TORCH_RUNTIME = TRAINER_CRDS / "runtime-torch-distributed.yaml"
TRAINER_CRD_NAMES = (
    "trainjobs.trainer.kubeflow.org",
    "trainingruntimes.trainer.kubeflow.org",
    "clustertrainingruntimes.trainer.kubeflow.org",
)
JOBSET_NAMESPACE = "jobset-system"
TRAINER_NAMESPACE = "kubeflow-system"
KUEUE_NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_FRAMEWORKS = ("batch/job", "jobset.x-k8s.io/jobset", "trainer.kubeflow.org/trainjob")
# Kueue's beta features that need what this control plane lacks: the visibility API server (an aggregated
# API with its own certificates) and MultiKueue (whose CRDs are not in ../shared/crds).
KUEUE_FEATURE_GATES = {"VisibilityOnDemand": False, "MultiKueue": False}
START_TIMEOUT = 120


@dataclass
class Engine:
    """A running controller: its name, log, webhook port and process."""

    name: str
    log: Path
    webhook_port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 30 seconds."""
        stop_process(self.process)

    def log_tail(self, chars: int = 5000) -> str:
        """The end of the controller's log."""
        return self.log.read_text(errors="replace")[-chars:]


def engines_bin_dir() -> Path:
    """The three controllers' binaries, built once (cached) by hack/build-training-engines.sh; a cold build
    takes minutes."""
    script = str(ROOT / "hack" / "build-training-engines.sh")
    bin_dir = Path(
        subprocess.run([script, "--print-dir"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    )
    if not all((bin_dir / name).is_file() for name in BINARIES):
        subprocess.run([script], stdout=subprocess.DEVNULL, check=True)
    return bin_dir


def install_crds(cluster: Cluster, folder: Path) -> None:
    """Install every CRD in ``folder`` (only ``*_*.yaml``: CRD files are named group_plural), Established."""
    files = sorted(path for path in folder.glob("*.yaml") if "_" in path.name)
    assert files, f"no CRDs in {folder}"
    cluster.install_crds(*files, what=f"the CRDs of {folder.name}")


def remove_trainer_crds(cluster: Cluster) -> None:
    """Delete Kubeflow Trainer's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime) and wait until the
    API server no longer serves them: a cluster without Trainer, for checking a fallback. Stop Trainer first;
    ``running_trainer`` installs them again."""
    # Trainer puts finalizers on TrainJobs and on the runtimes they use, and removes them itself: with
    # Trainer stopped, the CRDs' deletion would wait on them for ever. What Trainer would do at the end,
    # done here.
    served = cluster.kubectl("api-resources", "--api-group=trainer.kubeflow.org", "-o", "name").stdout.split()
    for resource in served:
        listed = json.loads(cluster.kubectl("get", resource, "-A", "-o", "json").stdout)["items"]
        for obj in listed:
            meta = obj["metadata"]
            if meta.get("finalizers"):
                where = ["-n", meta["namespace"]] if meta.get("namespace") else []
                cluster.kubectl(
                    "patch", resource, meta["name"], *where, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
    cluster.kubectl("delete", "crd", *TRAINER_CRD_NAMES, "--ignore-not-found", "--wait=true", timeout=120)

    def gone() -> bool:
        served = cluster.kubectl("api-resources", "--api-group=trainer.kubeflow.org", "-o", "name")
        return not served.stdout.strip()

    wait_for(gone, timeout=60, what="trainer.kubeflow.org to be no longer served")


def ensure_namespace(cluster: Cluster, name: str) -> None:
    """Create ``name`` if it does not exist."""
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )


# ---------------------------------------------------------------------------------------------- webhooks


def _webhook(
    name: str,
    path: str,
    group: str,
    version: str,
    resources: Sequence[str],
    operations: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """One webhook as kubebuilder writes it (failurePolicy Fail, sideEffects None, admission review v1);
    its clientConfig is filled in when registered."""
    return {
        "name": name,
        "path": path,
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": [version],
                "operations": list(operations),
                "resources": list(resources),
            }
        ],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        **extra,
    }


C, CU = ("CREATE",), ("CREATE", "UPDATE")
JOBSET_POD_SELECTOR = {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]}
# JobSet v0.11.1: config/components/webhook/manifests.yaml with the patches of
# config/components/webhook/patches (the pod webhooks only for pods of a JobSet).
JOBSET_MUTATING = [
    _webhook(
        "mjobset.kb.io",
        "/mutate-jobset-x-k8s-io-v1alpha2-jobset",
        "jobset.x-k8s.io",
        "v1alpha2",
        ["jobsets"],
        C,
    ),
    _webhook("mpod.kb.io", "/mutate--v1-pod", "", "v1", ["pods"], C, objectSelector=JOBSET_POD_SELECTOR),
]
JOBSET_VALIDATING = [
    _webhook(
        "vjobset.kb.io",
        "/validate-jobset-x-k8s-io-v1alpha2-jobset",
        "jobset.x-k8s.io",
        "v1alpha2",
        ["jobsets"],
        CU,
    ),
    _webhook("vpod.kb.io", "/validate--v1-pod", "", "v1", ["pods"], C, objectSelector=JOBSET_POD_SELECTOR),
]
# Kubeflow Trainer v2.2.0: manifests/base/webhook/manifests.yaml.
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_MUTATING = [
    _webhook(
        "defaulter.trainjob.trainer.kubeflow.org",
        "/mutate-trainer-kubeflow-org-v1alpha1-trainjob",
        TRAINER_GROUP,
        "v1alpha1",
        ["trainjobs"],
        CU,
    ),
]
TRAINER_VALIDATING = [
    _webhook(
        f"validator.{kind}.trainer.kubeflow.org",
        f"/validate-trainer-kubeflow-org-v1alpha1-{kind}",
        TRAINER_GROUP,
        "v1alpha1",
        [f"{kind}s"],
        CU,
    )
    for kind in ("clustertrainingruntime", "trainingruntime", "trainjob")
]
# Kueue v0.17.0: config/components/webhook/manifests.yaml, the webhooks of Kueue's own kinds and of the
# integrations enabled here (KUEUE_FRAMEWORKS); the others are not served when their integration is off.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_MUTATING = [
    _webhook(
        f"m{kind}.kb.io", f"/mutate-kueue-x-k8s-io-v1beta2-{kind}", KUEUE_GROUP, "v1beta2", [f"{kind}s"], C
    )
    for kind in ("clusterqueue", "resourceflavor", "workload")
] + [
    _webhook("mjob.kb.io", "/mutate-batch-v1-job", "batch", "v1", ["jobs"], C),
    _webhook(
        "mjobset.kb.io",
        "/mutate-jobset-x-k8s-io-v1alpha2-jobset",
        "jobset.x-k8s.io",
        "v1alpha2",
        ["jobsets"],
        C,
    ),
    _webhook(
        "mtrainjob.kb.io",
        "/mutate-trainer-kubeflow-org-v1alpha1-trainjob",
        TRAINER_GROUP,
        "v1alpha1",
        ["trainjobs"],
        C,
    ),
]
KUEUE_VALIDATING = [
    _webhook(
        f"v{kind}.kb.io", f"/validate-kueue-x-k8s-io-v1beta2-{kind}", KUEUE_GROUP, "v1beta2", [f"{kind}s"], CU
    )
    for kind in ("clusterqueue", "cohort", "resourceflavor")
] + [
    _webhook(
        "vworkload.kb.io",
        "/validate-kueue-x-k8s-io-v1beta2-workload",
        KUEUE_GROUP,
        "v1beta2",
        ["workloads", "workloads/status"],
        CU,
    ),
    _webhook("vjob.kb.io", "/validate-batch-v1-job", "batch", "v1", ["jobs"], CU),
    _webhook(
        "vjobset.kb.io",
        "/validate-jobset-x-k8s-io-v1alpha2-jobset",
        "jobset.x-k8s.io",
        "v1alpha2",
        ["jobsets"],
        CU,
    ),
    _webhook(
        "vtrainjob.kb.io",
        "/validate-trainer-kubeflow-org-v1alpha1-trainjob",
        TRAINER_GROUP,
        "v1alpha1",
        ["trainjobs"],
        CU,
    ),
]


def webhook_configurations(
    name: str,
    port: int,
    ca_pem: str,
    mutating: Sequence[Mapping[str, Any]],
    validating: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Mutating and validating webhook configurations called ``name`` whose webhooks reach
    ``https://127.0.0.1:port<path>`` and trust ``ca_pem``."""
    ca_bundle = base64.b64encode(ca_pem.encode()).decode()

    def by_url(hook: Mapping[str, Any]) -> dict[str, Any]:
        entry = {k: v for k, v in hook.items() if k != "path"}
        entry["clientConfig"] = {"url": f"https://127.0.0.1:{port}{hook['path']}", "caBundle": ca_bundle}
        return entry

    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [by_url(hook) for hook in hooks],
        }
        for kind, hooks in (
            ("MutatingWebhookConfiguration", mutating),
            ("ValidatingWebhookConfiguration", validating),
        )
        if hooks
    ]


# ------------------------------------------------------------------------------------- running a process


@contextlib.contextmanager
def _running(
    cluster: Cluster,
    workdir: Path,
    name: str,
    command: Callable[[Path, list[int]], list[str]],
    mutating: Sequence[Mapping[str, Any]],
    validating: Sequence[Mapping[str, Any]],
    webhooks_act: Callable[[], bool],
) -> Iterator[Engine]:
    """Start the controller ``name`` (``command(cert_dir, [webhook, metrics, health ports])``, run with
    TMPDIR in ``workdir``), wait for its webhook server to answer TLS, register its webhooks, wait until
    ``webhooks_act``, and yield it; on exit unregister the webhooks, stop it and print its log's tail."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmpdir = workdir / "tmp"
    # controller-runtime's default certificate folder: $TMPDIR/k8s-webhook-server/serving-certs.
    cert_dir = tmpdir / "k8s-webhook-server" / "serving-certs"
    ca_pem = make_serving_certificate(cert_dir)
    ports = free_ports(3)
    log_path = workdir / f"{name}.log"
    env = {**cluster.env, "TMPDIR": str(tmpdir)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command(cert_dir, ports), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    engine = Engine(name=name, log=log_path, webhook_port=ports[0], process=process)
    config_name = f"modelloop-e2e-{name}-{uuid.uuid4().hex[:8]}"
    try:
        wait_for(
            lambda: process.poll() is not None or answers_tls(ports[0], cert_dir / "tls.crt"),
            timeout=START_TIMEOUT,
            what=f"{name}'s webhook server to answer TLS on 127.0.0.1:{ports[0]}",
        )
        assert process.poll() is None, f"{name} exited early ({process.returncode}):\n{engine.log_tail()}"
        for manifest in webhook_configurations(config_name, ports[0], ca_pem, mutating, validating):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        # The API server picks webhook configurations up asynchronously, and the controller registers its
        # handlers after its caches sync: wait until a dry run is acted on.
        wait_for(
            lambda: process.poll() is not None or webhooks_act(),
            timeout=START_TIMEOUT,
            what=f"{name}'s webhooks to act",
        )
        assert process.poll() is None, f"{name} exited early ({process.returncode}):\n{engine.log_tail()}"
        yield engine
    finally:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.kubectl("delete", kind, config_name, "--ignore-not-found", check=False)
        engine.stop()
        sys.stdout.write(f"\n--- {name} log ({log_path}), tail ---\n{engine.log_tail()}\n")


def _write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def _dry_run(
    cluster: Cluster, obj: Mapping[str, Any], namespace: str | None
) -> subprocess.CompletedProcess[str]:
    args = ["create", "--dry-run=server", "-o", "json", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    return cluster.kubectl(*args, input=json.dumps(obj), check=False)


# ------------------------------------------------------------------------------------------------- JobSet


@contextlib.contextmanager
def running_jobset(cluster: Cluster, workdir: Path) -> Iterator[Engine]:
    """JobSet's controller (v0.11.1) with its JobSet and pod webhooks, its CRD installed first."""
    bin_dir = engines_bin_dir()
    install_crds(cluster, JOBSET_CRDS)
    ensure_namespace(cluster, JOBSET_NAMESPACE)

    def command(cert_dir: Path, ports: list[int]) -> list[str]:
        webhook, metrics, health = ports
        config = _write_config(
            workdir / "jobset-config.yaml",
            {
                "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
                "kind": "Configuration",
                "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(cert_dir)},
                # The metrics server serves TLS; without internal cert management it reads this folder.
                "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "certDir": str(cert_dir)},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
            },
        )
        return [str(bin_dir / "jobset"), f"--config={config}", "--zap-devel=false"]

    def webhooks_act() -> bool:
        # The defaulter gives an empty pod restart policy OnFailure (the CRD's schema defaults nothing
        # there); JobSet registers its validator together with it.
        probe = jobset_manifest("probe", replicas=1)
        defaulted = _dry_run(cluster, probe, "default")
        if defaulted.returncode != 0:
            return False
        pod_spec = json.loads(defaulted.stdout)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
            "spec"
        ]
        return bool(pod_spec.get("restartPolicy") == "OnFailure")

    with _running(
        cluster, workdir, "jobset", command, JOBSET_MUTATING, JOBSET_VALIDATING, webhooks_act
    ) as engine:
        yield engine


def jobset_manifest(name: str, replicas: int) -> dict[str, Any]:
    """A minimal JobSet: one replicated job of one pod (its restart policy left to the defaulter)."""
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {
            "replicatedJobs": [
                {
                    "name": "node",
                    "replicas": replicas,
                    "template": {
                        "spec": {
                            "template": {
                                "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]}
                            }
                        }
                    },
                }
            ]
        },
    }


# ------------------------------------------------------------------------------------------------ Trainer


@contextlib.contextmanager
def running_trainer(cluster: Cluster, workdir: Path) -> Iterator[Engine]:
    """Kubeflow Trainer's controller manager (v2.2.0) with its webhooks, its CRDs installed first and the
    ``torch-distributed`` ClusterTrainingRuntime after (so that its validator checks it). Trainer turns
    TrainJobs into JobSets: run it inside ``running_jobset``."""
    bin_dir = engines_bin_dir()
    install_crds(cluster, JOBSET_CRDS)  # Trainer looks the JobSet kind up at start-up
    install_crds(cluster, TRAINER_CRDS)
    ensure_namespace(cluster, TRAINER_NAMESPACE)

    def command(cert_dir: Path, ports: list[int]) -> list[str]:
        webhook, metrics, health = ports
        config = _write_config(
            workdir / "trainer-config.yaml",
            {
                "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
                "kind": "Configuration",
                # The webhook server reads $TMPDIR/k8s-webhook-server/serving-certs (cert_dir).
                "webhook": {"port": webhook, "host": "127.0.0.1"},
                "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "secureServing": False},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
                "certManagement": {"enable": False},
            },
        )
        return [str(bin_dir / "trainer-controller-manager"), f"--config={config}"]

    def webhooks_act() -> bool:
        # The TrainJob validator refuses a TrainJob whose runtime does not exist.
        probe = trainjob_manifest("probe", runtime="no-such-runtime")
        refused = _dry_run(cluster, probe, "default")
        return refused.returncode != 0 and "validator.trainjob.trainer.kubeflow.org" in refused.stderr

    with _running(
        cluster, workdir, "trainer", command, TRAINER_MUTATING, TRAINER_VALIDATING, webhooks_act
    ) as engine:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(TORCH_RUNTIME))
        yield engine


def trainjob_manifest(name: str, runtime: str = "torch-distributed", **trainer: Any) -> dict[str, Any]:
    """A TrainJob on the ClusterTrainingRuntime ``runtime``; ``trainer`` fills spec.trainer."""
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": TRAINER_GROUP, "kind": "ClusterTrainingRuntime"},
            "trainer": {"image": "example.invalid/trainer:1", **trainer},
        },
    }


# -------------------------------------------------------------------------------------------------- Kueue


@contextlib.contextmanager
def running_kueue(cluster: Cluster, workdir: Path) -> Iterator[Engine]:
    """Kueue's controller (v0.17.0) with the integrations batch/job, JobSet and TrainJob and its webhooks,
    its CRDs installed first. Jobs are managed only when they carry the queue-name label.

    Without internal cert management Kueue's metrics server reads its certificate from the fixed folder
    /etc/kueue/metrics/certs: the process runs in its own user and mount namespace (``unshare``), where an
    overlay over /etc holds that folder, so that the host's /etc is left alone."""
    bin_dir = engines_bin_dir()
    install_crds(cluster, KUEUE_CRDS)
    ensure_namespace(cluster, KUEUE_NAMESPACE)

    def command(cert_dir: Path, ports: list[int]) -> list[str]:
        webhook, metrics, health = ports
        config = _write_config(
            workdir / "kueue-config.yaml",
            {
                "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                "kind": "Configuration",
                "namespace": KUEUE_NAMESPACE,
                "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(cert_dir)},
                "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
                "manageJobsWithoutQueueName": False,
                "integrations": {"frameworks": list(KUEUE_FRAMEWORKS)},
                "featureGates": KUEUE_FEATURE_GATES,
            },
        )
        overlay = workdir / "etc-overlay"
        certs = overlay / "upper" / "kueue" / "metrics" / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        (overlay / "work").mkdir(exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (certs / name).write_bytes((cert_dir / name).read_bytes())
        script = (
            'mount -t overlay overlay -o lowerdir=/etc,upperdir="$1",workdir="$2" /etc'
            ' && shift 2 && exec "$@"'
        )
        return [
            *("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"),
            str(overlay / "upper"),
            str(overlay / "work"),
            str(bin_dir / "kueue"),
            f"--config={config}",
        ]

    def webhooks_act() -> bool:
        # The Job defaulter suspends a Job that names a queue; the ClusterQueue validator refuses a
        # negative quota.
        job = indexed_job("probe", parallelism=1, requests={"cpu": "1"})
        job["metadata"]["labels"] = {QUEUE_LABEL: "probe"}
        job["spec"]["suspend"] = False
        defaulted = _dry_run(cluster, job, "default")
        if defaulted.returncode != 0 or not json.loads(defaulted.stdout)["spec"].get("suspend"):
            return False
        refused = _dry_run(cluster, cluster_queue("probe", {"cpu": "-1"}), None)
        return refused.returncode != 0 and "vclusterqueue.kb.io" in refused.stderr

    with _running(
        cluster, workdir, "kueue", command, KUEUE_MUTATING, KUEUE_VALIDATING, webhooks_act
    ) as engine:
        yield engine


def indexed_job(
    name: str, parallelism: int, requests: Mapping[str, str], suspend: bool = False, queue: str | None = None
) -> dict[str, Any]:
    """An Indexed Job of ``parallelism`` pods (completions the same), each requesting (and limited to)
    ``requests``, tolerating the GPU nodes' taint; with ``queue``, labelled for Kueue's LocalQueue."""
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue} if queue else {}},
        "spec": {
            "parallelism": parallelism,
            "completions": parallelism,
            "completionMode": "Indexed",
            "suspend": suspend,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "train",
                            "image": "example.invalid/trainer:1",
                            "resources": {"requests": dict(requests), "limits": dict(requests)},
                        }
                    ],
                }
            },
        },
    }
    return job


def cluster_queue(name: str, quota: Mapping[str, str]) -> dict[str, Any]:
    """A ClusterQueue for every namespace with one flavor (called ``name``) covering ``quota``."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": list(quota),
                    "flavors": [
                        {
                            "name": name,
                            "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()],
                        }
                    ],
                }
            ],
        },
    }


def make_queue(
    cluster: Cluster, namespace: str, name: str, *, cpu: str = "64", memory: str = "256Gi", gpus: int = 0
) -> None:
    """A ResourceFlavor and a ClusterQueue called ``name`` with this quota of cpu, memory and
    nvidia.com/gpu, and a LocalQueue ``name`` in ``namespace`` pointing at it; waits until the ClusterQueue
    is Active (Kueue has seen the flavor)."""
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name}}
    quota = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)}
    local = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": name},
    }
    for obj in (flavor, cluster_queue(name, quota), local):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def active() -> bool:
        cq = cluster.get("clusterqueue.kueue.x-k8s.io", name)
        return any(
            c["type"] == "Active" and c["status"] == "True"
            for c in cq.get("status", {}).get("conditions", [])
        )

    wait_for(active, timeout=60, what=f"ClusterQueue {name} Active")


def set_quota(cluster: Cluster, name: str, *, cpu: str = "64", memory: str = "256Gi", gpus: int = 0) -> None:
    """Replace the nominal quota of the ClusterQueue ``name`` (made by ``make_queue``)."""
    quota = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cluster_queue(name, quota)))


def delete_queue(cluster: Cluster, namespace: str, name: str) -> None:
    """Delete what ``make_queue`` made (without waiting)."""
    for args in (
        ("localqueue.kueue.x-k8s.io", name, "-n", namespace),
        ("clusterqueue.kueue.x-k8s.io", name),
        ("resourceflavor.kueue.x-k8s.io", name),
    ):
        cluster.kubectl("delete", *args, "--ignore-not-found", "--wait=false", check=False)


def workloads_of(cluster: Cluster, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    """The Kueue Workloads in ``namespace`` whose controller owner is the ``kind`` called ``name``."""
    items = cluster.get("workloads.kueue.x-k8s.io", namespace=namespace)["items"]
    return [
        wl
        for wl in items
        if any(
            ref.get("controller") and ref["kind"] == kind and ref["name"] == name
            for ref in wl["metadata"].get("ownerReferences", [])
        )
    ]
