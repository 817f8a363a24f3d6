"""The one Kubernetes client wrapper: configuration (in-cluster or kubeconfig) and start-up checks.

kopf keeps its own watch connections; this module is for the synchronous calls the operator makes
around them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from modelloop.api import GROUP, KINDS, VERSION


class PreflightError(RuntimeError):
    """The operator cannot work against this cluster; the message says why and what to do."""


def api_client() -> ApiClient:
    """A client configured the way kubectl would be: in-cluster when running in a pod, else the
    kubeconfig named by KUBECONFIG (or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        try:
            # KUBECONFIG is read now, not when the kubernetes package was imported.
            kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        except (ConfigException, FileNotFoundError) as error:
            raise PreflightError(
                f"no Kubernetes configuration found (in-cluster or kubeconfig): {error}"
            ) from error
    return ApiClient(configuration)


def preflight(plurals: Iterable[str] | None = None, timeout: float = 10.0) -> str:
    """Check that the API server answers and serves our kinds; return its version.

    Raises PreflightError with a message a person can act on: which server could not be reached, or
    which CustomResourceDefinitions are missing and how to install them.
    """
    wanted = set(plurals if plurals is not None else (info.plural for info in KINDS))
    client = api_client()
    server = client.configuration.host
    with client:
        try:
            version = kubernetes.client.VersionApi(client).get_code(_request_timeout=timeout)
        except (HTTPError, OSError) as error:
            raise PreflightError(f"cannot reach the Kubernetes API server at {server}: {error}") from error
        except ApiException as error:
            raise PreflightError(
                f"the Kubernetes API server at {server} refused us: {error.reason}"
            ) from error
        try:
            served = kubernetes.client.CustomObjectsApi(client).get_api_resources(
                GROUP, VERSION, _request_timeout=timeout
            )
            available = {resource.name for resource in served.resources}
        except ApiException as error:
            if error.status != 404:
                raise PreflightError(f"cannot list the {GROUP}/{VERSION} API: {error.reason}") from error
            available = set()
    missing = sorted(wanted - available)
    if missing:
        crds = ", ".join(f"{plural}.{GROUP}" for plural in missing)
        raise PreflightError(
            f"the cluster at {server} does not serve {crds}: install the CRDs first "
            "(kubectl apply --server-side -f crds/, or `modelloop crds | kubectl apply --server-side -f -`)"
        )
    return str(version.git_version)
