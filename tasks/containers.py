"""A daemonless container engine: podman (with the runc runtime), driven by its command line.

What ctflows needs of one: build a Dockerfile, import a root filesystem, push and pull by
digest, run an image as a container (a published loopback port, a memory limit, volumes),
read its log, its peak memory and whether the kernel killed it, and stop it with SIGTERM as a
pod's termination does. Every call has a deadline; a failure names the command and carries the
tail of what it printed. A missing tool is an error naming the Debian package, never a skip.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import CtflowsError, ErrorKind

log = logging.getLogger(__name__)

# this VM's hard limits (nofile 20000): podman's defaults (1048576) would be refused
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
PACKAGES = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}
STEP = re.compile(r"^STEP (\d+/\d+): (.*)$")


class ContainerError(CtflowsError, RuntimeError):
    """A container engine command failed; the message names it and what it printed."""

    def __init__(self, what: str, cause: str, output: str = "") -> None:
        self.what, self.cause, self.output = what, cause, output
        tail = f"\n{tail_of(output)}" if output.strip() else ""
        super().__init__(f"{what}: {cause}{tail}")


class RuntimeMissing(ContainerError):
    """The container tool asked for is not installed on this machine."""

    kind = ErrorKind.BAD_INPUT

    def __init__(self, tool: str) -> None:
        package = PACKAGES.get(tool, tool)
        super().__init__(
            f"container runtime {tool}",
            f"{tool} is not installed on this machine: install the Debian package {package} "
            "(`make container-tools`), or choose another gates.infra_validation.runtime",
        )


def tail_of(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def require(tool: str) -> str:
    path = shutil.which(tool) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / tool).exists()), None
    )
    if path is None:
        raise RuntimeMissing(tool)
    return path


def failed_step(output: str) -> str:
    """The build step a failed ``podman build`` was at: ``STEP 5/12: RUN pip install ...``."""
    steps = [m for line in output.splitlines() if (m := STEP.match(line.strip()))]
    if not steps:
        return "before its first step"
    last = steps[-1]
    return f"STEP {last[1]}: {last[2][:160]}"


@dataclass(frozen=True)
class Running:
    """A started container: its id, name and the loopback URL of its published port."""

    id: str
    name: str
    url: str


class Podman:
    """The podman command line; ``timeout`` bounds every call that is not a build."""

    def __init__(self, timeout: float = 120.0, runtime: str = "runc") -> None:
        self.podman = require("podman")
        self.runtime = require(runtime)
        self.timeout = timeout
        self.monitors: dict[str, Path] = {}

    def _run(
        self,
        args: Sequence[str],
        what: str,
        timeout: float | None = None,
        check: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [self.podman, *args],
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
                cwd=cwd,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
            raise ContainerError(
                what, f"no answer within {timeout or self.timeout:.0f}s", out or ""
            ) from exc
        if check and done.returncode != 0:
            raise ContainerError(what, f"exit {done.returncode}", done.stdout + done.stderr)
        return done

    # -- images ---------------------------------------------------------------------------------
    def exists(self, image: str) -> bool:
        return (
            self._run(["image", "exists", image], "podman image exists", check=False).returncode
            == 0
        )

    def build(
        self,
        dockerfile: Path,
        context: Path,
        tag: str,
        from_image: str | None = None,
        volumes: Sequence[str] = (),
        timeout: float = 1800.0,
    ) -> None:
        """``podman build`` (chroot isolation, host network, OCI format); a failure names the
        step it failed at."""
        args = ["build", "--isolation=chroot", "--network=host", "--format=oci", "--layers"]
        args += ["-f", str(dockerfile), "-t", tag]
        if from_image:
            args += ["--from", from_image]
        for volume in volumes:
            args += ["--volume", volume]
        done = self._run([*args, str(context)], f"podman build {dockerfile}", timeout, check=False)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise ContainerError(
                f"podman build {dockerfile}",
                f"failed at {failed_step(done.stdout)} (exit {done.returncode})",
                output,
            )

    def import_rootfs(self, tar: Path, tag: str, changes: Sequence[str] = ()) -> None:
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        self._run([*args, str(tar), tag], f"podman import {tar}", 600)

    def push(self, image: str, destination: str, digestfile: Path, insecure: bool) -> str:
        """Push ``image`` to ``destination`` (``docker://...`` or ``oci:<dir>:<tag>``) with OCI
        media types; returns the pushed manifest's digest."""
        args = ["push", "--format=oci", f"--digestfile={digestfile}"]
        if insecure:
            args.append("--tls-verify=false")
        self._run([*args, image, destination], f"podman push {destination}", 1200)
        return digestfile.read_text().strip()

    def pull(self, ref: str, insecure: bool) -> None:
        args = ["pull", "--quiet"] + (["--tls-verify=false"] if insecure else [])
        self._run([*args, ref], f"podman pull {ref}", 600)

    def inspect_image(self, image: str) -> dict[str, Any]:
        done = self._run(["image", "inspect", image], f"podman image inspect {image}")
        found: list[dict[str, Any]] = json.loads(done.stdout)
        return found[0]

    def remove_image(self, image: str) -> None:
        """Untag and delete ``image`` unless a container still uses it (then it stays)."""
        self._run(["rmi", image], f"podman rmi {image}", check=False)

    # -- containers -----------------------------------------------------------------------------
    def start(
        self,
        image: str,
        name: str,
        port: int,
        container_port: int = 8080,
        env: dict[str, str] | None = None,
        volumes: Sequence[str] = (),
        memory_bytes: int | None = None,
    ) -> Running:
        """``podman run -d`` with runc, ``container_port`` published on 127.0.0.1:``port``."""
        args = ["run", "--detach", "--runtime", self.runtime, *ULIMITS, "--name", name]
        args += ["--publish", f"127.0.0.1:{port}:{container_port}"]
        if memory_bytes:
            args += ["--memory", str(memory_bytes), "--memory-swap", str(memory_bytes)]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        # conmon (the container's monitor) writes a file `oom` into its working directory
        # when the kernel kills the container for memory: kept apart, and read by state()
        self.monitors[name] = Path(tempfile.mkdtemp(prefix="ctflows-conmon-"))
        done = self._run([*args, image], f"podman run {image}", cwd=self.monitors[name])
        return Running(done.stdout.strip(), name, f"http://127.0.0.1:{port}")

    def state(self, name: str) -> dict[str, Any]:
        done = self._run(["inspect", "--type=container", name], f"podman inspect {name}")
        found: list[dict[str, Any]] = json.loads(done.stdout)
        state: dict[str, Any] = found[0]["State"]
        monitor = self.monitors.get(name)
        if monitor is not None and (monitor / "oom").exists():
            state["OOMKilled"] = True  # podman 4.3 with runc on cgroup v1 does not say so
        return state

    def logs(self, name: str) -> str:
        """The container's output, stdout and stderr interleaved as written."""
        try:
            done = subprocess.run(
                [self.podman, "logs", name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"(podman logs {name} gave no answer within {self.timeout:.0f}s)"
        return done.stdout

    def peak_memory(self, container_id: str) -> int | None:
        """The container's peak memory in bytes, from its memory cgroup (v1 or v2)."""
        for path in (
            f"/sys/fs/cgroup/memory/libpod_parent/libpod-{container_id}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/libpod_parent/libpod-{container_id}/memory.peak",
            f"/sys/fs/cgroup/machine.slice/libpod-{container_id}.scope/memory.peak",
        ):
            try:
                return int(Path(path).read_text().strip())
            except (OSError, ValueError):
                continue
        return None

    def stop(self, name: str, seconds: int = 10) -> None:
        """SIGTERM, then SIGKILL after ``seconds``: as a pod's termination."""
        self._run(["stop", "--time", str(seconds), name], f"podman stop {name}", seconds + 60)

    def remove(self, name: str) -> None:
        self._run(["rm", "--force", "--time", "5", name], f"podman rm {name}", check=False)
        monitor = self.monitors.pop(name, None)
        if monitor is not None:
            shutil.rmtree(monitor, ignore_errors=True)
