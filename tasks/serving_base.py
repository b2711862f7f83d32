"""The serving base image, built from ``deployments/serving/Dockerfile`` without a Docker daemon.

    make serving-base REGISTRY=ghcr.io/team            # FROM python:3.11-slim, as written
    make serving-base REGISTRY=... BOOTSTRAP=bookworm  # FROM a Debian bookworm made here
    make flow-image REGISTRY=...                       # deployments/flow/Dockerfile, the same way

podman builds the Dockerfile (chroot isolation, the host's network, OCI media types) and
pushes it; the digest is printed in the form ``image.base`` wants. With ``--bootstrap`` the
first ``FROM`` is replaced by a Debian root filesystem made by mmdebstrap (minbase + python3,
python3-venv): no registry is needed for the base's base. pip inside the build gets the
host's CA bundle and package index (a proxy's CA, a private index), mounted for the RUN steps
only, never written into the image.

Built images are cached: podman's store holds ``localhost/ctflows-serving:<key>``, the key
being a hash of every file the Dockerfile copies (and of the FROM), so the first build takes
minutes and later ones a lookup; the tests also keep it as an OCI layout under the cache folder
(``$CTFLOWS_CACHE``, else ``$XDG_CACHE_HOME/ctflows``, else ``~/.cache/ctflows``) to push it
into each session's registry unchanged, by the same digest.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.containers import ContainerError, Podman, require
from tasks.errors import CtflowsError, ErrorKind

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = Path("deployments/serving/Dockerfile")
BOOTSTRAP_PACKAGES = ("python3", "python3-venv")
MIRROR = "http://deb.debian.org/debian"
LOCAL = "localhost/ctflows-serving"
PIP_IN_BUILD = "/etc/xdg/pip"


class BaseBuildError(CtflowsError, RuntimeError):
    """The serving base could not be built or pushed; the message names the step."""

    kind = ErrorKind.FAILED


@dataclass(frozen=True)
class BuiltBase:
    """A serving base in podman's store: its local tag, and how long making it took."""

    local: str
    seconds: float
    cached: bool


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("CTFLOWS_CACHE"):
        return Path(env["CTFLOWS_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ctflows"


def source_files(root: Path = ROOT, dockerfile: Path = DOCKERFILE) -> list[Path]:
    """What a Dockerfile reads: itself and every file its ``COPY`` lines copy (caches skipped)."""
    files = {root / dockerfile}
    for line in (root / dockerfile).read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        for source in [w for w in words[1:] if not w.startswith("--")][:-1]:
            path = root / source
            found = [path] if path.is_file() else sorted(path.rglob("*"))
            files |= {
                p for p in found if p.is_file() and not {"__pycache__", ".git"} & set(p.parts)
            }
    return sorted(files)


def source_key(
    root: Path = ROOT, from_image: str | None = None, dockerfile: Path = DOCKERFILE
) -> str:
    """A hash of the Dockerfile, what it copies and the FROM: the cached image's tag."""
    digest = hashlib.sha256((from_image or "dockerfile-from").encode())
    for path in source_files(root, dockerfile):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time per cache entry, across processes (two test sessions)."""
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bootstrap_image(podman: Podman, suite: str = "bookworm", mirror: str = MIRROR) -> str:
    """A Debian ``suite`` root filesystem (minbase + python3, python3-venv) imported into
    podman as ``localhost/ctflows-bootstrap:<suite>-<hash>``; made once, then reused."""
    key = hashlib.sha256(f"{suite} {mirror} {' '.join(BOOTSTRAP_PACKAGES)}".encode()).hexdigest()
    tag = f"localhost/ctflows-bootstrap:{suite}-{key[:12]}"
    with locked(f"bootstrap-{suite}"):
        if podman.exists(tag):
            return tag
        mmdebstrap = require("mmdebstrap")
        with tempfile.TemporaryDirectory(prefix="ctflows-rootfs-") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            include = ",".join(BOOTSTRAP_PACKAGES)
            cmd = [mmdebstrap, "--variant=minbase", f"--include={include}", suite, str(tar), mirror]
            log.info("making a Debian %s root filesystem with mmdebstrap (%s)", suite, mirror)
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            except subprocess.TimeoutExpired as exc:
                raise BaseBuildError(f"mmdebstrap {suite}: no result within 900 s") from exc
            if done.returncode != 0:
                raise ContainerError(
                    f"mmdebstrap {suite} from {mirror}", f"exit {done.returncode}", done.stderr
                )
            podman.import_rootfs(tar, tag, ['CMD ["/bin/bash"]'])
    return tag


def host_index(environ: Mapping[str, str] | None = None) -> list[str]:
    """The host's pip index settings worth passing into a build: http(s) index URLs from pip's
    configuration and environment (``file://`` mirrors are not visible inside the build)."""
    env = os.environ if environ is None else environ
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in env.items() if k.startswith("PIP_") or k in {"HOME", "PATH"}},
    )
    lines: list[str] = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        urls = [u for u in value.strip("'\"").split() if u.startswith(("http://", "https://"))]
        if name in {"index-url", "extra-index-url"} and urls:
            lines.append(f"{name} = {' '.join(urls)}")
    return sorted(set(lines))


def build_volumes(folder: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The host's CA bundle and a pip.conf naming it (and the host's index), mounted for the
    RUN steps at ``/etc/xdg/pip`` (pip's site-wide configuration; left empty in the image)."""
    env = os.environ if environ is None else environ
    conf = ["[global]", *host_index(env)]
    ca = next(
        (
            Path(p)
            for p in (env.get("PIP_CERT"), env.get("SSL_CERT_FILE"))
            if p and Path(p).is_file()
        ),
        Path("/etc/ssl/certs/ca-certificates.crt"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    if ca.is_file():
        shutil.copyfile(ca, folder / "ca.crt")
        conf.append(f"cert = {PIP_IN_BUILD}/ca.crt")
    (folder / "pip.conf").write_text("\n".join(conf) + "\n")
    return [f"{folder}:{PIP_IN_BUILD}:ro"]


def build_base(
    podman: Podman,
    from_image: str | None = None,
    bootstrap: str | None = None,
    root: Path = ROOT,
    dockerfile: Path = DOCKERFILE,
    name: str = LOCAL,
) -> BuiltBase:
    """Build ``dockerfile`` (the serving base's by default; the flow image's with
    ``deployments/flow/Dockerfile``) into podman's store as ``name:<key>``, or find it built."""
    started = time.monotonic()
    if bootstrap:
        from_image = bootstrap_image(podman, bootstrap)
    key = source_key(root, from_image, dockerfile)
    local = f"{name}:{key}"
    with locked(f"{name.rsplit('/', 1)[-1]}-{key}"):
        if podman.exists(local):
            return BuiltBase(local, time.monotonic() - started, True)
        log.info("building %s from %s", local, root / dockerfile)
        with tempfile.TemporaryDirectory(prefix="ctflows-build-") as tmp:
            volumes = build_volumes(Path(tmp) / "pip")
            podman.build(root / dockerfile, root, local, from_image, volumes)
    return BuiltBase(local, time.monotonic() - started, False)


def cached_layout(podman: Podman, local: str) -> tuple[Path, str, str]:
    """The built base as an OCI layout in the cache folder (compressed once): (layout, tag,
    manifest digest), to push into a registry by the same digest."""
    tag = local.rsplit(":", 1)[1]
    layout = cache_dir() / "serving-base"
    with locked(f"layout-{tag}"):
        index = layout / "index.json"
        for entry in json.loads(index.read_text())["manifests"] if index.exists() else []:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return layout, tag, str(entry["digest"])
        layout.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            digest = podman.push(local, f"oci:{layout}:{tag}", Path(tmp) / "digest", False)
    return layout, tag, digest


def push_base(podman: Podman, local: str, repository: str, tag: str) -> str:
    """Push the base to ``repository:tag``; returns ``repository@sha256:...``."""
    from tasks.registry import Reference, is_loopback

    registry = Reference.parse(f"{repository}:{tag}").registry
    with tempfile.TemporaryDirectory() as tmp:
        digest = podman.push(
            local, f"docker://{repository}:{tag}", Path(tmp) / "digest", is_loopback(registry)
        )
    return f"{repository}@{digest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a ctflows image with podman and push it.")
    parser.add_argument("--registry", required=True, help="e.g. ghcr.io/team")
    parser.add_argument("--name", default="ctflows-serving")
    parser.add_argument("--tag", default=None, help="default: the sources' hash")
    parser.add_argument("--from", dest="from_image", help="replace the Dockerfile's FROM")
    parser.add_argument("--bootstrap", help="FROM a Debian suite made by mmdebstrap (bookworm)")
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE, help="relative to the repo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        podman = Podman()
        local = f"localhost/{args.name}"
        built = build_base(
            podman, args.from_image, args.bootstrap, dockerfile=args.dockerfile, name=local
        )
        how = "found in podman's store" if built.cached else "built"
        print(f"{built.local} {how} in {built.seconds:.0f}s", file=sys.stderr)
        tag = args.tag or built.local.rsplit(":", 1)[1]
        pinned = push_base(podman, built.local, f"{args.registry}/{args.name}", tag)
    except CtflowsError as exc:
        print(f"serving-base: {exc}", file=sys.stderr)
        return 2 if exc.kind is ErrorKind.BAD_INPUT else 1
    key = "image.base" if args.dockerfile == DOCKERFILE else "workpool.image"
    print(f"{key}: {pinned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
