"""Where the API server is and how to log in to it, as kubectl would: the pod's service account, else the
current context of the kubeconfig.

A kubeconfig user may hold a token, a token file (read again as it rotates), a client certificate and key
(file or data), or an exec credential plugin (``client.authentication.k8s.io`` v1 and v1beta1): how EKS
(``aws eks get-token``), GKE (``gke-gcloud-auth-plugin``), AKS and OIDC (``kubelogin``) log in. A plugin
runs when a credential is first needed, its answer is kept until its ``expirationTimestamp``, and it runs
again after that or when the API server refuses the credential (401). Legacy ``auth-provider`` entries are
refused: kubectl dropped them for exec plugins (kubelogin replaces azure and oidc, gke-gcloud-auth-plugin
replaces gcp).

Nothing here talks to the API server; ``modelloop.kube`` does, with what this module returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
# How long a plugin may take: one that logs in through a browser (kubelogin) waits on a person.
EXEC_SECONDS = 60.0
EXEC_INTERACTIVE_SECONDS = 300.0
# A credential is renewed this long before it expires, so that no request leaves with one that expires
# on the way.
EXPIRY_MARGIN_SECONDS = 10.0
# What of a failing plugin's standard error an error message quotes.
STDERR_LIMIT = 1000
# The most a plugin may print: an ExecCredential is a few KiB.
OUTPUT_LIMIT = 1024 * 1024


class PreflightError(RuntimeError):
    """The operator or the CLI cannot start talking to the cluster; the message says what to fix."""


class CredentialError(PreflightError):
    """A credential plugin could not give a credential; the message says which plugin and why."""


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's ``exec`` entry, and the cluster it logs in to (for ``provideClusterInfo``)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    interactive_mode: str = "IfAvailable"
    provide_cluster_info: bool = False
    install_hint: str = ""
    cluster: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The ExecCredential's spec.cluster: the kubeconfig's cluster, as client-go passes it."""


@dataclass(frozen=True)
class ExecCredential:
    """What a plugin answered: a token, or a client certificate and key (PEM); and until when."""

    token: str | None = None
    certificate: str | None = None
    key: str | None = None
    expires: float | None = None
    """Unix time; None: valid until the API server refuses it."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where the API server is and how to authenticate: what kubectl would use."""

    server: str
    namespace: str = "default"
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    certificate_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None  # read at each connection: projected service-account tokens rotate
    exec_plugin: ExecPlugin | None = None
    tls_server_name: str | None = None
    source: str = field(default="", compare=False)

    def ssl_context(self, certificate: tuple[str, str] | None = None) -> ssl.SSLContext:
        """The TLS settings; ``certificate``, (certificate file, key file), is a plugin's client
        certificate, used in place of the kubeconfig's."""
        context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if certificate is not None:
            context.load_cert_chain(*certificate)
        elif self.certificate_file:
            context.load_cert_chain(self.certificate_file, self.key_file)
        return context

    def bearer_token(self) -> str | None:
        """The static token: the kubeconfig's, or its token file's (read now). A plugin's: ``Credentials``."""
        if self.token_file:
            with open(self.token_file) as file:
                return file.read().strip()
        return self.token


class Credentials:
    """The credential to send now, for one client: static ones as configured, a plugin's kept until it
    expires or is refused. Concurrent callers that find it stale run the plugin once between them.

    ``clock`` (Unix time) and ``run`` (the plugin's process) are injected by tests.
    """

    # A token file is read again after this long: projected service-account tokens rotate (hourly by
    # default, valid for longer), and reading the file for every request would cost each one a read.
    TOKEN_FILE_SECONDS = 60.0

    def __init__(
        self,
        config: ClusterConfig,
        *,
        clock: Callable[[], float] = time.time,
        run: Callable[[ExecPlugin, str, bool], Any] | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._run = run or run_plugin
        self._interactive = sys.stdin.isatty() if interactive is None else interactive
        self._exec: ExecCredential | None = None
        self._file_token: tuple[float, str | None] | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.runs = 0
        """How many times the plugin ran (for the operator's logs and the tests)."""

    @property
    def uses_plugin(self) -> bool:
        return self.config.exec_plugin is not None

    async def token(self) -> str | None:
        """The bearer token to send now."""
        if self.config.exec_plugin is None:
            return self._static_token()
        credential = await self.current()
        return credential.token

    async def current(self) -> ExecCredential:
        """The plugin's credential, run again when there is none yet or it is about to expire."""
        credential = self._exec
        if credential is not None and not self._stale(credential):
            return credential
        async with self._lock_of_this_loop():
            if self._exec is None or self._stale(self._exec):
                self._exec = await self._call()
            return self._exec

    async def refused(self, token: str | None) -> bool:
        """The API server answered 401 to ``token``: forget it, so that the next call runs the plugin
        again (once, however many requests were refused with it). Whether a retry may help."""
        if self.config.exec_plugin is None:
            self._file_token = None
            return self.config.token_file is not None
        async with self._lock_of_this_loop():
            if self._exec is not None and self._exec.token == token:
                self._exec = None
        return True

    def expires(self) -> float | None:
        """When the plugin's current credential expires (Unix time), if it said so."""
        return None if self._exec is None else self._exec.expires

    def _lock_of_this_loop(self) -> asyncio.Lock:
        """The lock of the running event loop: a CLI runs each command on a loop of its own, and an asyncio
        lock serves one loop; what the plugin gave is kept across them."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def _stale(self, credential: ExecCredential) -> bool:
        return credential.expires is not None and self._clock() >= credential.expires - EXPIRY_MARGIN_SECONDS

    def _static_token(self) -> str | None:
        if not self.config.token_file:
            return self.config.token
        now = time.monotonic()
        if self._file_token is None or now - self._file_token[0] > self.TOKEN_FILE_SECONDS:
            self._file_token = (now, self.config.bearer_token())
        return self._file_token[1]

    async def _call(self) -> ExecCredential:
        plugin = self.config.exec_plugin
        assert plugin is not None
        interactive = interactive_session(plugin, self._interactive)
        self.runs += 1
        output = await self._run(plugin, exec_info(plugin, interactive), interactive)
        return parse_exec_credential(plugin, output, self._clock())


def interactive_session(plugin: ExecPlugin, terminal: bool) -> bool:
    """Whether the plugin may talk to the user (client-go's rules): Never: no; IfAvailable: when standard
    input is a terminal; Always: it must be, or the login fails."""
    if plugin.interactive_mode == "Never":
        return False
    if plugin.interactive_mode == "Always" and not terminal:
        raise CredentialError(
            f"the credential plugin {plugin.command!r} needs an interactive terminal (interactiveMode: "
            "Always), and standard input is not one: log in from a terminal, or use a plugin or mode "
            "that works without one"
        )
    return terminal


def exec_info(plugin: ExecPlugin, interactive: bool) -> str:
    """KUBERNETES_EXEC_INFO: the ExecCredential the plugin is given."""
    spec: dict[str, Any] = {"interactive": interactive}
    if plugin.provide_cluster_info:
        spec["cluster"] = dict(plugin.cluster)
    return json.dumps({"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec})


async def run_plugin(plugin: ExecPlugin, info: str, interactive: bool) -> bytes:
    """Run the plugin and return what it printed; CredentialError when it cannot run, fails or hangs."""
    env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": info}
    try:
        process = await asyncio.create_subprocess_exec(
            plugin.command,
            *plugin.args,
            env=env,
            stdin=None if interactive else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            # A plugin that talks to the user does so on standard error.
            stderr=None if interactive else asyncio.subprocess.PIPE,
            limit=OUTPUT_LIMIT,
        )
    except OSError as error:
        hint = f" ({plugin.install_hint.strip()})" if plugin.install_hint.strip() else ""
        raise CredentialError(
            f"the credential plugin {plugin.command!r} cannot be run: {error.strerror or error}{hint}"
        ) from error
    seconds = EXEC_INTERACTIVE_SECONDS if interactive else EXEC_SECONDS
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError as error:
        _kill(process)
        await process.wait()
        raise CredentialError(
            f"the credential plugin {plugin.command!r} gave no credential within {seconds:.0f} s"
        ) from error
    except BaseException:  # cancelled (the operator stops): the plugin goes too
        _kill(process)
        raise
    if process.returncode != 0:
        said = (stderr or b"").decode(errors="replace").strip()[-STDERR_LIMIT:]
        raise CredentialError(
            f"the credential plugin {plugin.command!r} failed (exit code {process.returncode})"
            + (f": {said}" if said else "")
        )
    if len(stdout) > OUTPUT_LIMIT:
        raise CredentialError(
            f"the credential plugin {plugin.command!r} printed more than {OUTPUT_LIMIT} bytes"
        )
    return stdout


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def parse_exec_credential(plugin: ExecPlugin, output: bytes | str, now: float) -> ExecCredential:
    """The credential in a plugin's answer, checked as client-go checks it; the message of the error never
    quotes the answer (it holds a secret)."""
    where = f"the credential plugin {plugin.command!r}"
    try:
        answer = json.loads(output)
    except ValueError as error:
        raise CredentialError(f"{where} printed no ExecCredential (not JSON)") from error
    if not isinstance(answer, dict) or answer.get("kind") != "ExecCredential":
        raise CredentialError(f"{where} printed something other than an ExecCredential")
    if answer.get("apiVersion") != plugin.api_version:
        raise CredentialError(
            f"{where} answered in {answer.get('apiVersion')!r}; "
            f"the kubeconfig asks for {plugin.api_version!r}"
        )
    status = answer.get("status")
    if not isinstance(status, dict):
        raise CredentialError(f"{where} answered without a status")
    token = status.get("token") or None
    certificate = status.get("clientCertificateData") or None
    key = status.get("clientKeyData") or None
    if token is None and certificate is None:
        raise CredentialError(f"{where} answered with neither a token nor a client certificate")
    if (certificate is None) != (key is None):
        raise CredentialError(
            f"{where} answered with a client certificate and no key, or a key and no certificate"
        )
    if any(value is not None and not isinstance(value, str) for value in (token, certificate, key)):
        raise CredentialError(f"{where} answered with a credential that is not a string")
    expires = None
    stamp = status.get("expirationTimestamp")
    if stamp:
        try:
            expires = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError as error:
            raise CredentialError(
                f"{where} answered with an expirationTimestamp that is not a time: {stamp!r}"
            ) from error
        if expires <= now:
            raise CredentialError(f"{where} answered with a credential that expired at {stamp}")
    return ExecCredential(token=token, certificate=certificate, key=key, expires=expires)


def load_config() -> ClusterConfig:
    """The configuration kubectl would use: in-cluster when running in a pod (the service account's token
    and CA), else the current context of the kubeconfig named by KUBECONFIG (or ~/.kube/config)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = os.path.join(SERVICE_ACCOUNT, "token")
    if host and port and os.path.exists(token_file):
        namespace_file = os.path.join(SERVICE_ACCOUNT, "namespace")
        namespace = "default"
        if os.path.exists(namespace_file):
            with open(namespace_file) as file:
                namespace = file.read().strip() or "default"
        server_host = f"[{host}]" if ":" in host else host
        return ClusterConfig(
            server=f"https://{server_host}:{port}",
            namespace=namespace,
            ca_file=os.path.join(SERVICE_ACCOUNT, "ca.crt"),
            token_file=token_file,
            source="in-cluster service account",
        )
    return kubeconfig(kubeconfig_path())


def kubeconfig(path: str) -> ClusterConfig:
    """The current context of the kubeconfig at ``path``."""
    try:
        with open(path) as file:
            config = yaml.safe_load(file) or {}
    except OSError as error:
        raise PreflightError(
            f"no Kubernetes configuration found (in-cluster or kubeconfig): {error}"
        ) from error
    except yaml.YAMLError as error:
        raise PreflightError(f"the kubeconfig {path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise PreflightError(f"the kubeconfig {path} is not a kubeconfig (a YAML mapping)")

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in config.get(section) or ():
            if isinstance(item, dict) and item.get("name") == name:
                return dict(item.get(section[:-1]) or {})
        raise PreflightError(f"the kubeconfig {path} has no {section[:-1]} named {name!r}")

    context_name = config.get("current-context")
    if not context_name:
        raise PreflightError(f"the kubeconfig {path} sets no current-context")
    context = named("contexts", context_name)
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user"))
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name") or "unnamed"
        raise PreflightError(
            f"the kubeconfig {path} authenticates through the auth-provider {provider!r}, which kubectl no "
            "longer runs either: use its exec credential plugin (kubelogin for oidc and azure, "
            "gke-gcloud-auth-plugin for gcp)"
        )
    base = os.path.dirname(os.path.abspath(path))

    def file_of(key: str, source: Mapping[str, Any]) -> str | None:
        if source.get(f"{key}-data"):
            return data_file(str(source[f"{key}-data"]))
        value = source.get(key)
        return None if not value else os.path.join(base, os.path.expanduser(str(value)))

    ca_data = cluster.get("certificate-authority-data")
    plugin = None
    if user.get("exec"):
        plugin = exec_plugin(path, base, user["exec"], cluster)
    return ClusterConfig(
        server=str(cluster.get("server") or "").rstrip("/"),
        namespace=str(context.get("namespace") or "default"),
        ca_file=None if ca_data else file_of("certificate-authority", cluster),
        ca_data=base64.b64decode(ca_data).decode() if ca_data else None,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_file=file_of("client-certificate", user),
        key_file=file_of("client-key", user),
        token=user.get("token"),
        token_file=file_of("tokenFile", {"tokenFile": user["tokenFile"]}) if user.get("tokenFile") else None,
        exec_plugin=plugin,
        tls_server_name=cluster.get("tls-server-name"),
        source=f"kubeconfig {path}, context {context_name}",
    )


def exec_plugin(path: str, base: str, entry: Mapping[str, Any], cluster: Mapping[str, Any]) -> ExecPlugin:
    """A user's ``exec`` entry, checked as client-go checks it."""
    where = f"the kubeconfig {path}'s exec credential plugin"
    command = str(entry.get("command") or "")
    if not command:
        raise PreflightError(f"{where} names no command")
    api_version = str(entry.get("apiVersion") or "")
    if api_version not in EXEC_API_VERSIONS:
        raise PreflightError(
            f"{where} asks for apiVersion {api_version!r}; supported: {', '.join(EXEC_API_VERSIONS)}"
        )
    mode = entry.get("interactiveMode")
    if mode is None:
        if api_version.endswith("/v1"):
            raise PreflightError(f"{where}: interactiveMode is required with {api_version}")
        mode = "IfAvailable"
    if mode not in INTERACTIVE_MODES:
        raise PreflightError(
            f"{where}: interactiveMode {mode!r} is not one of {', '.join(INTERACTIVE_MODES)}"
        )
    # A relative command with a directory in it is found beside the kubeconfig, as kubectl finds it; a bare
    # name on the PATH.
    if os.sep in command and not os.path.isabs(command):
        command = os.path.normpath(os.path.join(base, command))
    elif os.sep not in command:
        command = shutil.which(command) or command
    env = []
    for item in entry.get("env") or ():
        if not isinstance(item, dict) or not item.get("name"):
            raise PreflightError(f"{where} has an env entry without a name")
        env.append((str(item["name"]), str(item.get("value") or "")))
    return ExecPlugin(
        command=command,
        args=tuple(str(a) for a in entry.get("args") or ()),
        env=tuple(env),
        api_version=api_version,
        interactive_mode=str(mode),
        provide_cluster_info=bool(entry.get("provideClusterInfo")),
        install_hint=str(entry.get("installHint") or ""),
        cluster=_exec_cluster(cluster, base),
    )


def _exec_cluster(cluster: Mapping[str, Any], base: str) -> dict[str, Any]:
    """The cluster as an ExecCredential's spec.cluster carries it (the CA as base64 data, as client-go
    serialises its bytes)."""
    info: dict[str, Any] = {"server": str(cluster.get("server") or "")}
    ca = cluster.get("certificate-authority-data")
    if not ca and cluster.get("certificate-authority"):
        try:
            with open(
                os.path.join(base, os.path.expanduser(str(cluster["certificate-authority"]))), "rb"
            ) as file:
                ca = base64.b64encode(file.read()).decode()
        except OSError:
            ca = None
    if ca:
        info["certificate-authority-data"] = ca
    for key in ("tls-server-name", "insecure-skip-tls-verify", "proxy-url", "disable-compression"):
        if cluster.get(key):
            info[key] = cluster[key]
    for extension in cluster.get("extensions") or ():
        if isinstance(extension, dict) and extension.get("name") == EXEC_CLUSTER_EXTENSION:
            info["config"] = extension.get("extension")
    return info


def data_file(data: str, *, encoded: bool = True) -> str:
    """A private file with ``data`` (base64-decoded unless ``encoded`` is False): an SSL context loads
    client certificates from files. Named by its content: loading the configuration again (each login,
    each CLI command) reuses it."""
    content = base64.b64decode(data) if encoded else data.encode()
    folder = os.path.join(tempfile.gettempdir(), f"modelloop-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, hashlib.sha256(content).hexdigest()[:32] + ".pem")
    if not os.path.exists(path):
        handle, partial = tempfile.mkstemp(dir=folder)
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(partial, path)
    return path


def kubeconfig_path() -> str:
    """The kubeconfig kubectl would read: KUBECONFIG (read at each call; of a list, the first file), else
    ~/.kube/config."""
    configured = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.expanduser(configured or "~/.kube/config")


def current_namespace() -> str:
    """The namespace kubectl would use: the pod's own in a cluster, else the kubeconfig's current
    context's, else ``default``."""
    try:
        return load_config().namespace
    except PreflightError:
        return "default"
