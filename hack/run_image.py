#!/usr/bin/env python3
"""Runs one of modelloop's images without a container runtime, as a pod would run it.

    hack/run_image.py [OPTIONS] IMAGE [--] [ARGS...]

IMAGE is operator, trainer, server, seldon or detector (the OCI archive .images/<IMAGE>.oci.tar that
hack/images.sh writes) or the path of any OCI archive. The image's layers are unpacked once into a root
filesystem kept by the image's digest (MODELLOOP_ROOTFS_CACHE, default /var/cache/modelloop/rootfs for root,
else ~/.cache/modelloop/rootfs; an older root filesystem of the same image goes). Then bubblewrap runs the
image's entrypoint and command (ARGS replace the command, as `docker run IMAGE ARGS` does) with the
image's environment and working directory, as the image's user (a real unprivileged uid, also on the
host, when this is run as root): the root filesystem read-only, a fresh /tmp (tmpfs), its own /proc and
/dev, the host's network, /etc/hosts and /etc/resolv.conf, and the bind mounts asked for. A bound path
must be readable by the image's user, as a pod's volume must be.

Options:
    --bind SRC:DST       bind SRC (a file or folder on the host) at DST, writable
    --ro-bind SRC:DST    the same, read-only
    --env NAME=VALUE     set (or replace) an environment variable
    --entrypoint CMD     replace the image's entrypoint ("" runs ARGS alone)
    --user UID[:GID]     run as this user instead of the image's
    --workdir DIR        start in DIR instead of the image's working directory
    --inspect            print the image's digest, configuration and root filesystem as JSON, and exit
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("operator", "trainer", "server", "seldon", "detector")
WHITEOUT = ".wh."
# _layer_members checks every entry itself; Pythons with extraction filters would otherwise apply theirs
# (3.14's default refuses absolute symlinks, which root filesystems have).
TRUSTED: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Image:
    """An image in an OCI archive: its manifest's digest and what its configuration says to run."""

    name: str
    archive: str
    digest: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str
    rootfs: str


def images_dir() -> Path:
    return Path(os.environ.get("MODELLOOP_IMAGES_DIR") or ROOT / ".images")


def rootfs_cache() -> Path:
    if os.environ.get("MODELLOOP_ROOTFS_CACHE"):
        return Path(os.environ["MODELLOOP_ROOTFS_CACHE"])
    # As root the image's user must reach the root filesystem, and /root is private.
    if os.geteuid() == 0:
        return Path("/var/cache/modelloop/rootfs")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelloop" / "rootfs"


def archive_of(image: str) -> Path:
    if image in IMAGES:
        path = images_dir() / f"{image}.oci.tar"
        if not path.exists():
            raise SystemExit(f"{path} does not exist: build it with hack/images.sh {image}")
        return path
    path = Path(image)
    if not path.is_file():
        raise SystemExit(f"{image} is neither one of {', '.join(IMAGES)} nor an OCI archive")
    return path


def _blob(archive: tarfile.TarFile, digest: str) -> IO[bytes]:
    algorithm, _, hexdigest = digest.partition(":")
    file = archive.extractfile(f"blobs/{algorithm}/{hexdigest}")
    if file is None:
        raise SystemExit(f"the archive has no blob {digest}")
    return file


def _json_blob(archive: tarfile.TarFile, digest: str) -> Any:
    with _blob(archive, digest) as file:
        return json.load(file)


def load(image: str) -> Image:
    """Read the image's manifest and configuration, and unpack its root filesystem unless it is cached."""
    path = archive_of(image)
    with tarfile.open(path) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        descriptor = index["manifests"][0]
        manifest = _json_blob(archive, descriptor["digest"])
        config = _json_blob(archive, manifest["config"]["digest"]).get("config") or {}
        name = (descriptor.get("annotations") or {}).get("org.opencontainers.image.ref.name") or image
        rootfs = unpacked(archive, descriptor["digest"], manifest, name)
    env = dict(item.split("=", 1) for item in config.get("Env") or ())
    return Image(
        name=name,
        archive=str(path),
        digest=descriptor["digest"],
        user=config.get("User") or "",
        entrypoint=list(config.get("Entrypoint") or ()),
        cmd=list(config.get("Cmd") or ()),
        env=env,
        workdir=config.get("WorkingDir") or "/",
        rootfs=str(rootfs),
    )


def unpacked(archive: tarfile.TarFile, digest: str, manifest: Any, name: str) -> Path:
    """The image's root filesystem, unpacked once per digest (under a lock: two callers unpack it once)."""
    cache = rootfs_cache()
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    target = cache / digest.partition(":")[2]
    if target.is_dir():
        return target
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        print(f"[run-image] unpacking {name} ({digest[:19]}) into {target}", file=sys.stderr)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
        try:
            for layer in manifest["layers"]:
                with _blob(archive, layer["digest"]) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
                    tar.extractall(
                        partial, members=_layer_members(tar, partial), numeric_owner=True, **TRUSTED
                    )
            partial.chmod(0o755)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        (cache / f"{target.name}.image").write_text(name)
        for other in cache.glob("*.image"):  # an older root filesystem of the same image
            if other.stem != target.name and other.read_text() == name:
                shutil.rmtree(cache / other.stem, ignore_errors=True)
                other.unlink()
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def _layer_members(tar: tarfile.TarFile, root: Path) -> Iterator[tarfile.TarInfo]:
    """One layer's entries, applied over the layers below as OCI says: whiteouts delete, an opaque
    whiteout empties its folder of what lower layers put there, a new entry replaces what was there. An
    entry that would land outside the root filesystem (through `..` or a symlink) stops the unpacking.
    Device nodes and fifos are left out: bubblewrap gives the sandbox its own /dev."""
    added: set[str] = set()
    real_root = os.path.realpath(root)
    for member in tar:
        name = posixpath.normpath(member.name.lstrip("/"))
        if name == "." or member.isdev() or member.isfifo():
            continue
        if member.islnk():  # a hard link names its target inside the layer's root
            member.linkname = posixpath.normpath(member.linkname.lstrip("/"))
        paths = [name, member.linkname] if member.islnk() else [name]
        if any(path == ".." or path.startswith("../") for path in paths):
            raise SystemExit(f"layer entry {member.name!r} points outside the root filesystem")
        folder, base = posixpath.split(name)
        parent = os.path.realpath(root / folder)
        if os.path.commonpath([parent, real_root]) != real_root:
            raise SystemExit(f"layer entry {member.name!r} lands outside the root filesystem ({parent})")
        if base == OPAQUE:
            for child in (root / folder).iterdir() if (root / folder).is_dir() else ():
                if posixpath.join(folder, child.name) not in added:
                    _remove(child)
            continue
        if base.startswith(WHITEOUT):
            _remove(root / folder / base[len(WHITEOUT) :])
            continue
        target = root / name
        if (target.is_symlink() or target.exists()) and not (
            member.isdir() and target.is_dir() and not target.is_symlink()
        ):
            _remove(target)  # never write through what a lower layer left (a symlink above all)
        added.add(name)
        member.name = name
        yield member


def user_ids(image: Image, user: str) -> tuple[int, int, str]:
    """The uid, gid and home folder of ``user`` (``name``, ``uid`` or either with ``:group``), looked up in
    the image's /etc/passwd and /etc/group as a container runtime does; an unknown numeric uid gets gid 0."""
    name, _, group = user.partition(":")
    passwd = _table(Path(image.rootfs) / "etc" / "passwd")
    entry = next((e for e in passwd if name in (e[0], e[2])), None) if name else passwd[0] if passwd else None
    if name and not name.isdigit() and entry is None:
        raise SystemExit(f"user {name!r} is not in the image's /etc/passwd")
    uid = int(name) if name.isdigit() else int(entry[2]) if entry else 0
    gid = int(entry[3]) if entry else 0
    if group:
        groups = _table(Path(image.rootfs) / "etc" / "group")
        found = next((g for g in groups if g[0] == group), None)
        gid = int(group) if group.isdigit() else int(found[2]) if found else -1
        if gid < 0:
            raise SystemExit(f"group {group!r} is not in the image's /etc/group")
    home = entry[5] if entry and len(entry) > 5 else "/"
    return uid, gid, home


def _table(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split(":") for line in path.read_text().splitlines() if line and not line.startswith("#")]


def in_root(rootfs: Path, path: str) -> Path:
    """``path`` inside the root filesystem with its symlinks followed as they are followed inside it (an
    absolute link from its root, never out of it): where a bind mount at ``path`` really lands."""
    current, parts, hops = rootfs, [p for p in path.split("/") if p], 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = current.parent if current != rootfs else rootfs
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > 40:
            raise SystemExit(f"{path}: too many symlinks in the image")
        target = os.readlink(candidate)
        parts = [p for p in target.split("/") if p] + parts
        if target.startswith("/"):
            current = rootfs
    return current


def _mount_point(rootfs: Path, destination: str, source: Path) -> str:
    """Make the mount point of a bind in the root filesystem, as a runtime does in a container's writable
    layer (bubblewrap cannot make one in a read-only root), and return its path inside the image."""
    point = in_root(rootfs, destination)
    if not (point.is_symlink() or point.exists()):
        try:
            if source.is_dir():
                point.mkdir(parents=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch()
        except OSError as error:
            raise SystemExit(f"cannot make the mount point {destination} in {rootfs}: {error}") from error
    return "/" + str(point.relative_to(rootfs))


def command_line(image: Image, args: argparse.Namespace) -> list[str]:
    """The command that runs ``image`` as asked: setpriv (as root: the image's uid on the host too), then
    bubblewrap, then the image's entrypoint and command."""
    uid, gid, home = user_ids(image, args.user if args.user is not None else image.user)
    entrypoint = (
        image.entrypoint if args.entrypoint is None else ([args.entrypoint] if args.entrypoint else [])
    )
    # A new entrypoint drops the image's command too, as with docker run --entrypoint and a pod's command.
    argv = [*entrypoint, *(args.args if args.args or args.entrypoint is not None else image.cmd)]
    if not argv:
        raise SystemExit(f"{image.name} has no entrypoint or command, and none was given")
    env = {"HOME": home, **image.env, **dict(item.split("=", 1) for item in args.env)}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    rootfs = Path(image.rootfs)
    binds: list[tuple[str, Path, str]] = [
        ("--ro-bind", Path(path), path) for path in ("/etc/hosts", "/etc/resolv.conf") if Path(path).is_file()
    ]
    for option, specs in (("--bind", args.bind), ("--ro-bind", args.ro_bind)):
        for spec in specs:
            source, _, destination = spec.partition(":")
            if not destination.startswith("/"):
                raise SystemExit(f"{spec}: give SRC:DST with an absolute DST")
            if not Path(source).exists():
                raise SystemExit(f"{spec}: {source} does not exist")
            binds.append((option, Path(source).resolve(), destination))
    binds = [
        (option, source, _mount_point(rootfs, destination, source)) for option, source, destination in binds
    ]
    command = [
        *(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
            if os.geteuid() == 0 and uid != 0
            else []
        ),
        "bwrap",
        *("--unshare-user", "--uid", str(uid), "--gid", str(gid)),
        *("--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try", "--die-with-parent"),
        *("--ro-bind", str(rootfs), "/"),
        *("--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"),
    ]
    for option, source, destination in binds:
        command += [option, str(source), destination]
    command.append("--clearenv")
    for key, value in env.items():
        command += ["--setenv", key, value]
    command += ["--chdir", args.workdir or image.workdir, "--", *argv]
    return command


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], usage="%(prog)s [OPTIONS] IMAGE [--] [ARGS...]"
    )
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    parser.add_argument("--ro-bind", action="append", default=[], metavar="SRC:DST")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--entrypoint")
    parser.add_argument("--user")
    parser.add_argument("--workdir")
    parser.add_argument("--inspect", action="store_true")
    parser.add_argument("image")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.args[:1] == ["--"]:
        args.args = args.args[1:]
    image = load(args.image)
    if args.inspect:
        json.dump(asdict(image), sys.stdout, indent=2)
        print()
        return
    command = command_line(image, args)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
