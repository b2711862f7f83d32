"""A Kubernetes API stand-in for tests: these machines have no cluster and cannot start one.

    python -m tests.kube_standin --port PORT --kubeconfig PATH

serves the apps/v1 Deployment API on 127.0.0.1 (discovery, get, list, watch, strategic-merge,
merge and JSON patch, status), writes a kubeconfig for it, and starts with the Deployments of
``deployments/k8s/``. It plays the Deployment controller: a template change bumps
``metadata.generation``, and the new pods become ready after ``--ready-delay`` seconds, except
for an image whose tag ends in ``-unready`` or that matches a rule posted to
``/standin/unready`` (``{"match": "<image substring>" | "<annotation>=<value>"}``), which never
does, so the ``Progressing`` condition ends with ``ProgressDeadlineExceeded``. Given a registry
(``--registry host:port``), an image on it must be there to be pulled, as a kubelet needs:
a manifest the registry does not have stays in ImagePullBackOff. Faults (500, 409, slow
answers) can be injected at ``POST /standin/faults``
(``{"method", "path", "status", "delay", "count", "skip"}``);
``GET /standin/requests`` lists what was asked.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT_PATH = re.compile(
    r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments(?:/(?P<name>[^/]+))?(?P<status>/status)?$"
)
ALL_DEPLOYMENTS = "/apis/apps/v1/deployments"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
}


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge patch for the lists Deployments use (merge by key)."""
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[field]
        out = [copy.deepcopy(item) for item in target]
        for item in patch:
            if isinstance(item, dict) and item.get("$patch") == "delete":
                out = [o for o in out if o.get(key) != item.get(key)]
                continue
            for i, existing in enumerate(out):
                if existing.get(key) == item.get(key):
                    out[i] = strategic_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder") or key == "$retainKeys":
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = strategic_merge(merged.get(key), value, key)
    return merged


def _pointer(path: str) -> list[str]:
    return (
        [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
        if path
        else []
    )


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "remove":
                parent.pop(index)
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "test" and parent[index] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            if kind in {"add", "replace"}:
                if kind == "replace" and last not in parent:
                    raise KeyError(op["path"])
                parent[last] = op["value"]
            elif kind == "remove":
                del parent[last]
            elif kind == "test" and parent.get(last) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
    return doc


class Cluster:
    """Deployments in memory, with a controller thread that rolls pods."""

    def __init__(self, ready_delay: float = 0.5, registry: str | None = None) -> None:
        self.registry = registry
        self.pullable: set[str] = set()
        self.unready: list[str] = []
        self.lock = threading.Condition()
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.ready_at: dict[tuple[str, str], float] = {}
        self.progress_started: dict[tuple[str, str], float] = {}
        self.resource_version = 1
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.ready_delay = ready_delay
        self.faults: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._control_loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # -- storage -------------------------------------------------------------------------------
    def _bump(self, obj: dict[str, Any], event: str) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.events.append((self.resource_version, event, copy.deepcopy(obj)))
        self.lock.notify_all()

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
            obj.setdefault("apiVersion", "apps/v1")
            obj.setdefault("kind", "Deployment")
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault("progressDeadlineSeconds", 600)
            obj["status"] = {"observedGeneration": 0}
            key = (meta["namespace"], meta["name"])
            self.deployments[key] = obj
            self._start_rollout(key)
            self._bump(obj, "ADDED")
            return copy.deepcopy(obj)

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.deployments.get((ns, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, ns: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (n, _), o in sorted(self.deployments.items())
                if ns is None or n == ns
            ]

    def replace(self, ns: str, name: str, new: dict[str, Any], status_only: bool) -> dict[str, Any]:
        with self.lock:
            key = (ns, name)
            old = self.deployments[key]
            if status_only:
                updated = copy.deepcopy(old)
                updated["status"] = new.get("status", {})
            else:
                updated = copy.deepcopy(new)
                updated["status"] = old.get("status", {})
                for field in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                    updated["metadata"][field] = old["metadata"][field]
                if updated.get("spec") != old.get("spec"):
                    updated["metadata"]["generation"] = old["metadata"]["generation"] + 1
            self.deployments[key] = updated
            if updated["metadata"]["generation"] != old["metadata"]["generation"]:
                self._start_rollout(key)
            self._bump(updated, "MODIFIED")
            return copy.deepcopy(updated)

    # -- controller ----------------------------------------------------------------------------
    @staticmethod
    def _matches(rule: str, images: Sequence[str], notes: dict[str, str]) -> bool:
        key, eq, value = rule.partition("=")
        if eq and notes.get(key) == value:
            return True
        return any(rule in img for img in images)

    def _pullable(self, image: str) -> bool:
        """An image on the stand-in's registry must exist there (HEAD its manifest)."""
        if not self.registry or not image.startswith(self.registry + "/"):
            return True
        if image in self.pullable:
            return True
        rest = image[len(self.registry) + 1 :]
        path, ref = rest.split("@", 1) if "@" in rest else (*rest.split(":", 1), "latest")[:2]
        req = urllib.request.Request(
            f"http://{self.registry}/v2/{path}/manifests/{ref}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=2):
                self.pullable.add(image)
                return True
        except OSError:
            return False

    def _start_rollout(self, key: tuple[str, str]) -> None:
        self.ready_at[key] = time.monotonic() + self.ready_delay
        self.progress_started[key] = time.monotonic()

    def _control_loop(self) -> None:
        while not self._stop.wait(0.05):
            with self.lock:
                for key in list(self.deployments):
                    self._reconcile(key)

    def _reconcile(self, key: tuple[str, str]) -> None:
        obj = self.deployments[key]
        spec, status, meta = obj["spec"], obj.get("status", {}), obj["metadata"]
        replicas = int(spec.get("replicas", 1))
        images = [c.get("image", "") for c in spec["template"]["spec"].get("containers", [])]
        notes = (spec["template"].get("metadata") or {}).get("annotations") or {}
        unready = any(img.endswith("-unready") for img in images) or any(
            self._matches(rule, images, notes) for rule in self.unready
        )
        unready = unready or not all(self._pullable(img) for img in images)
        ready = time.monotonic() >= self.ready_at.get(key, 0) and not unready
        deadline = float(spec.get("progressDeadlineSeconds", 600))
        elapsed = time.monotonic() - self.progress_started.get(key, time.monotonic())
        generation = meta["generation"]
        if ready:
            new_status = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "NewReplicaSetAvailable",
                        "message": f'ReplicaSet "{meta["name"]}" has successfully progressed.',
                    },
                ],
            }
        else:
            old_available = status.get("availableReplicas", 0)
            progressing = (
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{meta["name"]}" has timed out progressing.',
                }
                if elapsed > deadline
                else {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{meta["name"]}" is progressing.',
                }
            )
            new_status = {
                "observedGeneration": generation,
                "replicas": replicas + 1 if old_available else replicas,
                "updatedReplicas": 1 if replicas else 0,
                "readyReplicas": old_available,
                "availableReplicas": old_available,
                "unavailableReplicas": 1,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if old_available else "False",
                        "reason": "MinimumReplicasAvailable",
                    },
                    progressing,
                ],
            }
        if _strip_times(status) != new_status:
            for cond in new_status["conditions"]:
                cond["lastUpdateTime"] = cond["lastTransitionTime"] = now()
            obj["status"] = new_status
            self._bump(obj, "MODIFIED")


def _strip_times(status: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(status)
    for cond in out.get("conditions", []):
        cond.pop("lastUpdateTime", None)
        cond.pop("lastTransitionTime", None)
    return out


def api_resources() -> dict[str, Any]:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [
            {
                "name": "deployments",
                "singularName": "deployment",
                "namespaced": True,
                "kind": "Deployment",
                "verbs": verbs,
                "shortNames": ["deploy"],
                "categories": ["all"],
            },
            {
                "name": "deployments/status",
                "singularName": "",
                "namespaced": True,
                "kind": "Deployment",
                "verbs": ["get", "patch", "update"],
            },
        ],
    }


def make_handler(cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": reason,
                    "code": code,
                },
            )

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return None
            if "yaml" in (self.headers.get("Content-Type") or ""):
                return yaml.safe_load(raw)
            return json.loads(raw)

        def _fault(self, method: str, path: str) -> bool:
            with cluster.lock:
                for fault in cluster.faults:
                    if fault.get("method", method) != method or fault.get("path", path) not in path:
                        continue
                    if fault.get("count", 1) <= 0:
                        continue
                    if fault.get("skip", 0) > 0:  # let the first N matching requests through
                        fault["skip"] -= 1
                        continue
                    fault["count"] = fault.get("count", 1) - 1
                    break
                else:
                    return False
            if fault.get("delay"):
                time.sleep(float(fault["delay"]))
            code = int(fault.get("status", 0))
            if code:
                reason = {409: "Conflict", 403: "Forbidden", 404: "NotFound"}.get(
                    code, "InternalError"
                )
                self._status(code, reason, f"injected fault {code}")
                return True
            return False

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            path, query = url.path.rstrip("/") or "/", parse_qs(url.query)
            body: Any = self._body() if method in {"POST", "PATCH", "PUT"} else None
            with cluster.lock:
                cluster.requests.append(
                    {
                        "method": method,
                        "path": path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": body,
                    }
                )
            if path.startswith("/standin/"):
                return self._standin(method, path, body)
            if self._fault(method, path):
                return None
            if path == "/version":
                return self._send(
                    200,
                    {
                        "major": "1",
                        "minor": "31",
                        "gitVersion": "v1.31.0-standin",
                        "platform": "linux/amd64",
                    },
                )
            if path == "/api":
                return self._send(
                    200,
                    {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
                )
            if path == "/apis":
                return self._send(
                    200,
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [
                            {
                                "name": "apps",
                                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"},
                            }
                        ],
                    },
                )
            if path == "/api/v1":
                return self._send(
                    200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}
                )
            if path == "/apis/apps/v1":
                return self._send(200, api_resources())
            if path == ALL_DEPLOYMENTS and method == "GET":
                return self._list(None, query)
            match = DEPLOYMENT_PATH.match(path)
            if not match:
                return self._status(404, "NotFound", f"the server could not find {path}")
            ns, name, status = match["ns"], match["name"], bool(match["status"])
            if name is None:
                if method == "GET":
                    return self._list(ns, query)
                if method == "POST" and isinstance(body, dict):
                    body.setdefault("metadata", {})["namespace"] = ns
                    if cluster.get(ns, body["metadata"].get("name", "")):
                        return self._status(409, "AlreadyExists", "deployment already exists")
                    return self._send(201, cluster.create(body))
                return self._status(405, "MethodNotAllowed", f"{method} not allowed")
            current = cluster.get(ns, name)
            if current is None:
                return self._status(404, "NotFound", f'deployments.apps "{name}" not found')
            if method == "GET":
                return self._send(200, current)
            if method == "PUT":
                return self._send(200, cluster.replace(ns, name, body, status))
            if method == "PATCH":
                kind = (self.headers.get("Content-Type") or "").split(";")[0]
                try:
                    if kind == "application/json-patch+json":
                        new = json_patch(current, body)
                    elif kind == "application/merge-patch+json":
                        new = merge_patch(current, body)
                    elif kind == "application/strategic-merge-patch+json":
                        new = strategic_merge(current, body)
                    else:
                        return self._status(415, "UnsupportedMediaType", f"unsupported {kind}")
                except (KeyError, IndexError, ValueError, TypeError) as exc:
                    return self._status(422, "Invalid", f"patch does not apply: {exc}")
                return self._send(200, cluster.replace(ns, name, new, status))
            return self._status(405, "MethodNotAllowed", f"{method} not allowed")

        def _list(self, ns: str | None, query: dict[str, list[str]]) -> None:
            if query.get("watch", ["false"])[0] in {"true", "1"}:
                return self._watch(ns, query)
            items = cluster.list(ns)
            selector = query.get("fieldSelector", [""])[0]
            if selector.startswith("metadata.name="):
                wanted = selector.split("=", 1)[1]
                items = [i for i in items if i["metadata"]["name"] == wanted]
            self._send(
                200,
                {
                    "kind": "DeploymentList",
                    "apiVersion": "apps/v1",
                    "metadata": {"resourceVersion": str(cluster.resource_version)},
                    "items": items,
                },
            )

        def _watch(self, ns: str | None, query: dict[str, list[str]]) -> None:
            since = int(query.get("resourceVersion", ["0"])[0] or 0)
            timeout = float(query.get("timeoutSeconds", ["30"])[0])
            selector = query.get("fieldSelector", [""])[0]
            wanted = selector.split("=", 1)[1] if selector.startswith("metadata.name=") else None
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + timeout
            initial = query.get("sendInitialEvents", ["false"])[0] == "true"
            if since == 0 or initial:  # start with the current objects
                with cluster.lock:
                    current, since = cluster.list(ns), cluster.resource_version
                for obj in current:
                    if wanted in (None, obj["metadata"]["name"]):
                        self._chunk({"type": "ADDED", "object": obj})
                if initial:  # watch-list (kubectl >= 1.32): mark the end of the initial events
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Deployment",
                                "apiVersion": "apps/v1",
                                "metadata": {
                                    "resourceVersion": str(since),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    )
            try:
                while time.monotonic() < deadline:
                    with cluster.lock:
                        pending = [e for e in cluster.events if e[0] > since]
                        if not pending:
                            cluster.lock.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                            continue
                    for version, event, obj in pending:
                        since = version
                        meta = obj["metadata"]
                        if (ns is None or meta["namespace"] == ns) and wanted in (
                            None,
                            meta["name"],
                        ):
                            self._chunk({"type": event, "object": obj})
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return

        def _chunk(self, event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _standin(self, method: str, path: str, body: Any) -> None:
            if path == "/standin/faults" and method == "POST":
                with cluster.lock:
                    cluster.faults.append(dict(body or {}))
                return self._send(200, {"faults": cluster.faults})
            if path == "/standin/faults" and method == "DELETE":
                with cluster.lock:
                    cluster.faults.clear()
                return self._send(200, {"faults": []})
            if path == "/standin/unready" and method == "POST":
                with cluster.lock:
                    cluster.unready.append(str((body or {})["match"]))
                return self._send(200, {"unready": cluster.unready})
            if path == "/standin/requests":
                with cluster.lock:
                    return self._send(200, {"requests": cluster.requests})
            return self._status(404, "NotFound", path)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


def load_manifests(folder: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for file in sorted(folder.glob("*.yaml")):
        docs.extend(
            d for d in yaml.safe_load_all(file.read_text()) if d and d.get("kind") == "Deployment"
        )
    return docs


def write_kubeconfig(path: Path, port: int, namespace: str = "default") -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "standin", "user": {"token": "standin-token"}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
            }
        ],
        "current-context": "standin",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))


class Standin:
    """The stand-in as a context manager for tests: ``with Standin(tmp) as kube: kube.url``."""

    def __init__(
        self,
        kubeconfig: Path,
        port: int = 0,
        ready_delay: float = 0.3,
        manifests: Path | None = ROOT / "deployments" / "k8s",
        registry: str | None = None,
    ) -> None:
        self.cluster = Cluster(ready_delay, registry)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.cluster))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = kubeconfig
        if manifests is not None and manifests.exists():
            for doc in load_manifests(manifests):
                self.cluster.create(doc)
        write_kubeconfig(kubeconfig, self.port)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Standin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.cluster.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a Kubernetes API stand-in on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="kubeconfig to write")
    parser.add_argument(
        "--ready-delay", type=float, default=0.5, help="seconds until pods are ready"
    )
    parser.add_argument("--manifests", type=Path, default=ROOT / "deployments" / "k8s")
    parser.add_argument("--registry", help="host:port whose images must exist to be pulled")
    args = parser.parse_args(argv)
    with Standin(
        args.kubeconfig, args.port, args.ready_delay, args.manifests, args.registry
    ) as standin:
        print(f"Kubernetes API stand-in on {standin.url}; kubeconfig {args.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
