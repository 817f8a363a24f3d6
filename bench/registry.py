"""Benchmark: the model registry under load, on the local control plane with `modelloop run`.

- validation: N ModelVersions of one model applied at once (16 writers) against a ModelPolicy with a gate
  and a champion comparison; timed until every version is Validated or Rejected and labelled;
- promotion: one version after another made Champion through the requested-stage annotation (the
  previous champion archived, retention keeping 5); the latency from annotation to status, per promotion.

    .venv/bin/python bench/registry.py [--versions 1000] [--promotions 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
from trainingruns import STATE, WRITERS, cluster, cpu_seconds, peak_rss_mib

from modelloop.api import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "registry-bench"
GATE = {"metric": "accuracy", "comparison": "GreaterThanOrEqual", "threshold": 0.85}


def model_version(number: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelVersion",
        "metadata": {"name": f"bench-v{number}", "labels": {"app.kubernetes.io/managed-by": "modelloop"}},
        "spec": {
            "modelName": "bench",
            "version": number,
            "artifact": {"uri": f"s3://models/bench/{number}"},
            "framework": {"name": "sklearn"},
            "metrics": {"accuracy": 0.80 + (number % 20) / 100},
        },
    }


def wait(probe: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(interval)
    raise TimeoutError(probe)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()

    bin_dir = Path(cluster("bin-dir").strip())
    cluster("up")
    kubeconfig = str(STATE / "kubeconfig")
    env = {"KUBECONFIG": kubeconfig, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run([bin_dir / "kubectl", "apply", "--server-side", "-f", ROOT / "crds"], env=env, check=True)
    subprocess.run(
        [bin_dir / "kubectl", "wait", "--for=condition=Established", "crd", "--all"], env=env, check=True
    )
    subprocess.run([bin_dir / "kubectl", "create", "namespace", NAMESPACE], env=env, check=True)
    kubernetes.config.load_kube_config(config_file=kubeconfig)
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = WRITERS * 2
    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
    log = (STATE / "registry-operator.log").open("wb")
    operator = subprocess.Popen(
        [ROOT / ".venv" / "bin" / "modelloop", "run", "-n", NAMESPACE, "--log-format", "plain"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "modelpolicies",
            {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelPolicy", "metadata": {"name": "bench"},
                "spec": {
                    "validation": {
                        "gates": [GATE],
                        "champion": {"metric": "accuracy", "margin": 0.05},
                    },
                    "retention": {"keepArchived": 5},
                },
            },
        )  # fmt: skip
        # The operator is watching once it has reported on the policy; not part of any figure.
        wait(
            lambda: (
                (
                    api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelpolicies", "bench").get(
                        "status"
                    )
                    or {}
                ).get("phase")
                == "Active"
            ),
            timeout=60,
        )

        def decided() -> list[dict[str, Any]] | None:
            items = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelversions")["items"]
            done = [
                v for v in items
                if (v.get("status") or {}).get("phase") in ("Validated", "Rejected")
                and "modelloop.dev/stage" in v["metadata"]["labels"]
            ]  # fmt: skip
            return items if len(done) == args.versions else None

        started = time.monotonic()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(
                pool.map(
                    lambda n: api.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "modelversions", model_version(n)
                    ),
                    range(1, args.versions + 1),
                )
            )
        created = time.monotonic() - started
        items = wait(decided, timeout=600, interval=0.5)
        validation_seconds = time.monotonic() - started
        validated = sorted(int(v["spec"]["version"]) for v in items if v["status"]["phase"] == "Validated")

        latencies = []
        for number in validated[-args.promotions :]:
            name = f"bench-v{number}"
            began = time.monotonic()
            api.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "modelversions", name,
                {"metadata": {"annotations": {"modelloop.dev/requested-stage": "Champion"}}},
            )  # fmt: skip
            wait(
                lambda name=name: (
                    (
                        api.get_namespaced_custom_object(
                            GROUP, VERSION, NAMESPACE, "modelversions", name
                        ).get("status")
                        or {}
                    ).get("stage")
                    == "Champion"
                ),
                timeout=60,
                interval=0.02,
            )
            latencies.append(time.monotonic() - began)
        row = {
            "versions": args.versions,
            "create_seconds": round(created, 2),
            "all_decided_seconds": round(validation_seconds, 2),
            "validated": len(validated),
            "promotions": len(latencies),
            "promotion_p50_ms": round(statistics.median(latencies) * 1000),
            "promotion_max_ms": round(max(latencies) * 1000),
            "operator_peak_rss_mib": round(peak_rss_mib(operator.pid), 1),
            "operator_cpu_seconds": round(cpu_seconds(operator.pid), 2),
        }
        print(json.dumps(row), flush=True)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        if not args.keep_cluster:
            cluster("down")


if __name__ == "__main__":
    main()
