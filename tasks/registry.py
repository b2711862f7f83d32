"""An OCI registry through oras-py, with deadlines and errors that name the registry and cause.

oras-py does the distribution protocol (auth challenges, blob uploads, manifest PUT/GET);
this module bounds it: every request has ``image.timeout_seconds``, transient failures are
retried ``image.retries`` times with a short backoff (oras' own retry sleeps for minutes),
and a 401/403/5xx or a registry that does not answer becomes a ``RegistryError``.
Plain HTTP is used only for a loopback registry.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from tasks.config import ImageParams
from tasks.errors import CtflowsError

log = logging.getLogger(__name__)
T = TypeVar("T")

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REFERENCE = re.compile(
    r"^(?P<registry>[^/]+)/(?P<path>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
HTTP_REASONS = {s.value: s.phrase for s in HTTPStatus}
ACCEPT = ", ".join(sorted(INDEX_TYPES | MANIFEST_TYPES))


class RegistryError(CtflowsError, RuntimeError):
    """The registry refused, failed or did not answer; the message names it and the cause."""

    def __init__(self, registry: str, cause: str) -> None:
        self.registry, self.cause = registry, cause
        super().__init__(f"registry {registry}: {cause}")


@dataclass(frozen=True)
class Reference:
    """``registry/path[:tag][@sha256:digest]``, always with an explicit registry host."""

    registry: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        m = REFERENCE.match(ref)
        if not m or ("." not in m["registry"] and ":" not in m["registry"]):
            if m and m["registry"] == "localhost":
                return cls(m["registry"], m["path"], m["tag"], m["digest"])
            raise ValueError(
                f"{ref!r} is not a full image reference: "
                "expected host[:port]/path[:tag][@sha256:...]"
            )
        return cls(m["registry"], m["path"], m["tag"], m["digest"])

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.path}"

    def with_digest(self, digest: str) -> str:
        return f"{self.repository}@{digest}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.repository}{tag}{digest}"


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0].strip("[]") if registry.count(":") <= 1 else registry
    host = registry[1 : registry.index("]")] if registry.startswith("[") else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    raw: bytes

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.raw)
        return data

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@contextmanager
def _oras_errors(url: str, action: str) -> Iterator[None]:
    """oras reports a refused request as ValueError("Issue with <url>: <reason>")."""
    try:
        yield
    except ValueError as exc:
        match = re.search(r"Issue with (\S+): (.*)", str(exc))
        if match is None:
            raise
        reason = match[2]
        code = next((c for c, r in HTTP_REASONS.items() if r == reason), None)
        cause = f"answered {code} {reason}" if code else f"refused: {reason}"
        raise RegistryError(url, f"{cause} on {action} ({match[1]})") from exc


class Registry:
    """One registry host; credentials from the environment or the Docker config file."""

    def __init__(self, registry: str, image: ImageParams, environ: dict[str, str] | None = None):
        import oras.provider
        import requests
        from requests.adapters import HTTPAdapter

        self.registry, self.image = registry, image
        self.insecure = is_loopback(registry)
        timeout = image.timeout_seconds

        class _Adapter(HTTPAdapter):
            def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                kwargs["timeout"] = kwargs.get("timeout") or timeout
                return super().send(request, **kwargs)

        # oras' do_request retries for minutes (sleep 3**attempt); we bound it ourselves.
        unwrapped = oras.provider.Registry.do_request.__wrapped__

        class _Provider(oras.provider.Registry):
            def do_request(self, *args: Any, **kwargs: Any) -> requests.Response:
                response: requests.Response = unwrapped(self, *args, **kwargs)
                return response

        self.provider = _Provider(
            hostname=registry, insecure=self.insecure, auth_backend=image.auth_backend
        )
        for scheme in ("http://", "https://"):
            self.provider.session.mount(scheme, _Adapter(max_retries=0))
        self.last_status: int | None = None

        def remember(response: Any, *args: Any, **kwargs: Any) -> None:
            self.last_status = response.status_code

        self.provider.session.hooks["response"].append(remember)
        env = os.environ if environ is None else environ
        user, password = env.get(image.username_env), env.get(image.password_env)
        if user and password:
            self.provider.auth.set_basic_auth(user, password)
        else:  # ~/.docker/config.json or $DOCKER_CONFIG, with its credential helpers
            self.provider.auth.hostname = registry
            self.provider.auth.load_configs(f"{registry}/ctflows")
        self.sleep: Callable[[float], None] = time.sleep

    @property
    def url(self) -> str:
        return f"{self.provider.prefix}://{self.registry}"

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded retries of what is transient; RegistryError otherwise."""
        import requests

        delay = 0.5
        for attempt in range(self.image.retries + 1):
            self.last_status = None
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.image.retries:
                    kind = "timed out" if isinstance(exc, requests.Timeout) else "does not answer"
                    raise RegistryError(
                        self.url,
                        f"{kind} on {action} (after {attempt + 1} attempts, "
                        f"{self.image.timeout_seconds:.0f}s deadline each): {type(exc).__name__}",
                    ) from exc
                error: Exception = exc
            except (RegistryError, requests.RequestException, ValueError) as exc:
                failure = self._failure(action, exc)
                if not failure.cause.startswith("answered 5") or attempt == self.image.retries:
                    raise failure from exc
                error = failure
            log.warning("%s on %s: %s; retrying in %.1fs", action, self.url, error, delay)
            self.sleep(delay)
            delay = min(delay * 2, 4.0)
        raise AssertionError("unreachable")

    def _failure(self, action: str, exc: Exception) -> RegistryError:
        """Name the cause: the HTTP status the registry last answered, else the error."""
        status = self.last_status
        if status == 401 or (status is None and "authentication" in str(exc)):
            return RegistryError(
                self.url, f"refused the credentials on {action} (401): {self._creds()}"
            )
        if status == 403:
            return RegistryError(self.url, f"forbids {action} (403) with {self._creds()}")
        if status is not None and status >= 500:
            phrase = HTTP_REASONS.get(status, "")
            return RegistryError(self.url, f"answered {status} {phrase} on {action}")
        if isinstance(exc, RegistryError):
            return exc
        return RegistryError(self.url, f"{action} failed: {type(exc).__name__}: {exc}")

    def _creds(self) -> str:
        if os.environ.get(self.image.username_env):
            return f"credentials from ${self.image.username_env}/${self.image.password_env}"
        return (
            "credentials from the Docker config file (~/.docker/config.json); set "
            f"${self.image.username_env} and ${self.image.password_env} or run `docker login`"
        )

    def check(self, response: Any, action: str, ok: tuple[int, ...] = (200, 201, 202)) -> None:
        status = response.status_code
        if status in ok:
            return
        if status == 401:
            raise RegistryError(
                self.url, f"refused the credentials on {action} (401): {self._creds()}"
            )
        if status == 403:
            raise RegistryError(self.url, f"forbids {action} (403) with {self._creds()}")
        raise RegistryError(self.url, f"answered {status} {response.reason} on {action}")

    def manifest(self, ref: Reference, media_types: str = ACCEPT) -> Manifest | None:
        """The manifest at ``ref`` (by digest if it has one), or None if the registry has none."""
        target = ref.digest or ref.tag or "latest"
        url = f"{self.url}/v2/{ref.path}/manifests/{target}"
        action = f"GET manifest {ref.path}@{target}" if ref.digest else f"GET {ref.path}:{target}"

        def get() -> Manifest | None:
            response = self.provider.do_request(url, "GET", headers={"Accept": media_types})
            if response.status_code == 404:
                return None
            self.check(response, action)
            import hashlib

            digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
            if ref.digest and digest != ref.digest:
                raise RegistryError(
                    self.url, f"served a manifest for {ref} whose content has digest {digest}"
                )
            media = json.loads(response.content).get("mediaType") or response.headers.get(
                "Content-Type", ""
            )
            return Manifest(digest, media, response.content)

        return self.call(action, get)

    def pull_layout(self, ref: str, dest: Path) -> None:
        """Copy one image manifest (by digest) and its blobs into an OCI layout at ``dest``."""
        import shutil

        from oras.layout.layout import NewLayoutFromRegistry

        def pull() -> None:
            shutil.rmtree(dest, ignore_errors=True)
            with _oras_errors(self.url, f"pull {ref}"):
                NewLayoutFromRegistry(str(dest), self.provider, ref)

        self.call(f"pull {ref}", pull)

    def push_layout(self, layout: Path, ref_name: str, target: Reference) -> None:
        """Push the image named ``ref_name`` in the OCI layout to ``target`` (repo:tag)."""
        from oras.layout.layout import NewLayout

        def push() -> None:
            with _oras_errors(self.url, f"push {target}"):
                NewLayout(str(layout)).push_to_registry(self.provider, str(target), tag=ref_name)

        self.call(f"push {target}", push)
