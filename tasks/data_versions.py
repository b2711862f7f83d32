"""DVC data versions for stage `data`: a file's identity (its DVC md5) at a git revision, the
training window of versions before it, and their bytes in a local cache.

A repository given as a local path is read with git (no clone, milliseconds); a repository
given as a URL (``https://``, ``ssh://``, ``git@``, ``file://``) goes through DVC's own API:
``dvc.repo.Repo.open(url, rev=...)`` clones it, reads the DVC files at that revision and fetches
from the DVC remote the repository declares.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tasks.errors import CtflowsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from tasks.config import TrainingWindow

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
MAX_WINDOW = 100  # versions in one training window: what one MLflow lineage tag can list


class DataError(CtflowsError, RuntimeError):
    """The requested data version cannot be found, fetched or read."""


class MissingDataError(DataError):
    """The data version is known to git but its bytes are in no cache or remote: not transient."""


@dataclass(frozen=True)
class DataVersion:
    """One DVC-tracked file at one git revision; ``md5`` is its identity.

    ``history`` holds the older versions of the training window (newest first); a run trains on
    ``window`` (this version and its history), each read at its own revision.
    """

    repo: str
    path: str
    rev: str
    md5: str
    local_path: Path | None = None
    history: tuple[DataVersion, ...] = ()

    @property
    def short(self) -> str:
        return self.md5[:10]

    @property
    def window(self) -> tuple[DataVersion, ...]:
        return (self, *self.history)

    def members(self) -> tuple[DataVersion, ...]:
        """Each version of the window on its own (no history), newest first."""
        return tuple(replace(v, history=()) for v in self.window)

    def describe(self) -> str:
        return f"{self.path}@{self.rev[:10]} (md5 {self.md5})"


def is_url(repo: str) -> bool:
    """A repository address DVC must clone (``file://`` included), not a local folder."""
    return "://" in repo or (repo.startswith("git@") and ":" in repo)


def _git(repo: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def _norm(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/")).lstrip("/")


def md5_at(repo_dir: str, path: str, commit: str) -> str | None:
    """The DVC md5 of exactly ``path`` at ``commit``: from ``<path>.dvc`` (whose outputs are
    relative to its own folder) or from the root ``dvc.lock``; None when DVC does not track it."""
    target = _norm(path)
    try:
        meta = yaml.safe_load(_git(repo_dir, "show", f"{commit}:{path}.dvc")) or {}
        folder = posixpath.dirname(target)
        outs = [
            (_norm(posixpath.join(folder, str(out.get("path", "")))), out)
            for out in (meta.get("outs") or [] if isinstance(meta, dict) else [])
        ]
    except DataError:
        outs = [(_norm(str(out.get("path", ""))), out) for out in _lock_outs(repo_dir, commit)]
    for out_path, out in outs:
        if out_path == target and out.get("md5"):
            return str(out["md5"])
    return None


def _lock_outs(repo_dir: str, commit: str) -> list[dict[str, Any]]:
    try:
        lock = yaml.safe_load(_git(repo_dir, "show", f"{commit}:dvc.lock")) or {}
    except DataError:
        return []
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    return [out for stage in stages.values() for out in (stage.get("outs") or [])]


def _untracked(path: str, rev: str, commit: str, repo: str) -> DataError:
    return DataError(
        f"{path} is not tracked by DVC at {rev} ({commit[:10]}) in {repo}: "
        f"expected {path}.dvc or a dvc.lock output with exactly this path; "
        f"run `dvc add {path}` and commit"
    )


def resolve_version(
    repo: str, path: str, rev: str, window: TrainingWindow | None = None
) -> DataVersion:
    """Find the DVC md5 of ``path`` at git revision ``rev`` (and of the older versions in the
    training ``window``) without fetching any data."""
    if is_url(repo):
        return _resolve_remote(repo, path, rev, window)
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    md5 = md5_at(repo, path, commit)
    if md5 is None:
        raise _untracked(path, rev, commit, repo)
    newest = DataVersion(repo=repo, path=path, rev=commit, md5=md5)
    if window is None or window.newest_only:
        return newest
    return replace(newest, history=_window_history(repo, repo, newest, window))


def _resolve_remote(url: str, path: str, rev: str, window: TrainingWindow | None) -> DataVersion:
    """Through DVC's API: the clone DVC makes of ``url``, at ``rev``."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import SCMError

    try:
        with Repo.open(url, rev=rev) as repo:
            commit = str(repo.get_rev())
            try:
                info = repo.dvcfs.info(path)
            except FileNotFoundError:
                info = {}
            md5 = (info.get("dvc_info") or {}).get("md5")
            if not md5:
                raise _untracked(path, rev, commit, url)
            newest = DataVersion(repo=url, path=path, rev=commit, md5=str(md5))
            if window is None or window.newest_only:
                return newest
            clone = str(repo.scm.root_dir)
            if _git(clone, "rev-parse", "--is-shallow-repository").strip() == "true":
                _git(clone, "fetch", "--quiet", "--unshallow")
            return replace(newest, history=_window_history(clone, url, newest, window))
    except (DvcException, SCMError) as exc:
        raise DataError(f"DVC cannot open {url} at {rev}: {exc}") from exc


def _window_history(
    repo_dir: str, repo: str, newest: DataVersion, window: TrainingWindow
) -> tuple[DataVersion, ...]:
    """The older distinct versions of ``newest.path`` in the window, newest first.

    Walks the commits that touched ``<path>.dvc`` or ``dvc.lock`` up to ``newest.rev``; each new
    md5 is a version, dated by the commit that introduced it.
    """
    limit = min(window.versions or MAX_WINDOW, MAX_WINDOW)
    start = int(_git(repo_dir, "show", "-s", "--format=%ct", newest.rev).strip())
    oldest = start - window.days * DAY_SECONDS if window.days is not None else None
    seen, history = {newest.md5}, list[DataVersion]()
    for commit, when in _touching_commits(repo_dir, newest.rev, newest.path):
        if len(history) + 1 >= limit or (oldest is not None and when < oldest):
            break
        md5 = md5_at(repo_dir, newest.path, commit)
        if md5 is None or md5 in seen:
            continue
        seen.add(md5)
        history.append(DataVersion(repo=repo, path=newest.path, rev=commit, md5=md5))
    log.info("training window of %s: %d versions", newest.path, len(history) + 1)
    return tuple(history)


def _touching_commits(repo_dir: str, rev: str, path: str) -> Iterator[tuple[str, int]]:
    out = _git(repo_dir, "log", "--format=%H %ct", rev, "--", f"{path}.dvc", "dvc.lock")
    for line in out.splitlines():
        commit, when = line.split()
        yield commit, int(when)


def fetch_version(version: DataVersion, cache_dir: Path | None = None) -> DataVersion:
    """Fetch the bytes of every version in the window into a DVC cache; return them with paths.

    A local repository uses its own DVC cache; a URL uses ``cache_dir`` (DVC's temporary cache
    of this process when None).
    """
    pulled = [_fetch_one(v, cache_dir) for v in version.window]
    return replace(pulled[0], history=tuple(pulled[1:]))


def _fetch_one(version: DataVersion, cache_dir: Path | None) -> DataVersion:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        if is_url(version.repo):
            config = {"cache": {"dir": str(cache_dir.resolve())}} if cache_dir else None
            opened = Repo.open(version.repo, rev=version.rev, config=config)
        else:
            opened = Repo(version.repo)
        with opened as repo:
            cached = Path(repo.cache.local.oid_to_path(version.md5))
            if not _complete(repo, cached, version):
                try:
                    if is_url(version.repo):
                        repo.fetch(targets=[version.path])
                    else:
                        repo.fetch(targets=[version.path], revs=[version.rev], workspace=False)
                except DvcException:
                    if version.md5.endswith(".dir") and cached.exists():
                        _materialize_parts(repo, cached, version)  # names the missing parts
                    raise
            if not cached.exists():
                raise _missing(version, repo)
            if version.md5.endswith(".dir"):
                cached = _materialize_parts(repo, cached, version)
    except DvcException as exc:
        raise DataError(f"dvc fetch of {version.describe()} failed: {exc}") from exc
    return replace(version, local_path=cached, history=())


def _dir_entries(manifest: Path) -> list[dict[str, str]]:
    """The files of a DVC-tracked directory: its ``.dir`` object lists relpath and md5."""
    import json

    entries = json.loads(manifest.read_text())
    return sorted(entries, key=lambda e: e["relpath"])


def _complete(repo: Any, cached: Path, version: DataVersion) -> bool:
    if not cached.exists():
        return False
    if not version.md5.endswith(".dir"):
        return True
    return all(Path(repo.cache.local.oid_to_path(e["md5"])).exists() for e in _dir_entries(cached))


def _materialize_parts(repo: Any, manifest: Path, version: DataVersion) -> Path:
    """A DVC-tracked directory of Parquet parts as a folder of links into the DVC cache
    (content-addressed, so one folder per directory md5 is safe to share); a part missing from
    every cache and remote is an error naming it."""
    entries = _dir_entries(manifest)
    missing = [
        e["relpath"] for e in entries if not Path(repo.cache.local.oid_to_path(e["md5"])).exists()
    ]
    if missing:
        raise MissingDataError(
            f"{version.describe()}: part(s) {missing} are in neither the DVC cache nor the "
            "remote; run `dvc push` where this version was produced"
        )
    if not entries:
        raise DataError(f"{version.describe()} is an empty directory: no Parquet parts")
    folder = manifest.parent / f"{manifest.name}.parts"
    if not folder.exists():
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for entry in entries:
            link = staging / entry["relpath"]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(repo.cache.local.oid_to_path(entry["md5"])).resolve())
        try:
            staging.rename(folder)  # atomic: a reader sees all parts or none
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process got there first
    return folder


def _missing(version: DataVersion, repo: Any) -> MissingDataError:
    """What to do when no cache or remote holds the data: the message a new user needs."""
    name = repo.config["core"].get("remote")
    remote = repo.config["remote"].get(name, {}).get("url") if name else None
    where = f"its DVC remote {name!r} ({remote})" if remote else "any DVC remote (none is set)"
    stage = _producing_stage(repo, version)
    if stage:
        todo = (
            f"it is the output of stage `{stage}` in dvc.yaml: run `dvc repro {stage}` in "
            f"{version.repo} (and `dvc push` to share it), then run again"
        )
    else:
        todo = (
            "run `dvc push` where this version was produced, or point data.repo, data.path and "
            "data.rev in params.yaml at a version that was pushed"
        )
    return MissingDataError(
        f"no data yet: {version.describe()} is known to git but is in neither the DVC cache of "
        f"{version.repo} nor {where}; {todo}"
    )


def _producing_stage(repo: Any, version: DataVersion) -> str | None:
    if is_url(version.repo):
        return None
    try:
        lock = yaml.safe_load(_git(version.repo, "show", f"{version.rev}:dvc.lock")) or {}
    except DataError:
        return None
    for name, stage in (lock.get("stages") or {}).items():
        if any(_norm(str(o.get("path", ""))) == _norm(version.path) for o in stage.get("outs", [])):
            return str(name)
    return None


def init_data_repo(repo: Path, remote: Path) -> None:
    """A git+DVC repository whose default DVC remote is the local directory ``remote``,
    committed so that a clone (by path or URL) finds the remote too."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _run(repo, "git", "init", "-q", "-b", "main")
        _run(repo, "git", "config", "user.email", "ctflows@localhost")
        _run(repo, "git", "config", "user.name", "ctflows")
    if not (repo / ".dvc").exists():
        from dvc.repo import Repo

        quiet = logging.getLogger("dvc.repo.init")  # its "you can now commit" is ours to do
        level, quiet.level = quiet.level, logging.WARNING
        try:
            dvc_repo = Repo.init(str(repo))
        finally:
            quiet.setLevel(level)
        with dvc_repo, dvc_repo.config.edit() as config:
            config["core"]["autostage"] = True
            config["core"]["remote"] = "local"
            config["remote"]["local"] = {"url": str(remote.resolve())}
        _run(repo, "git", "add", ".dvc", ".dvcignore")
        _run(repo, "git", "commit", "-q", "-m", "Initialize DVC")


def publish_batch(
    repo: Path, df: pd.DataFrame | list[pd.DataFrame], path: str, message: str
) -> str:
    """Write ``df`` at ``path``, ``dvc add`` + commit + ``dvc push`` it; return the commit.

    A list of frames is written as a directory of Parquet parts (``part-00000.parquet``, ...),
    DVC-tracked as one directory: one data version, one md5.
    """
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(df, list):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for i, part in enumerate(df):
            part.to_parquet(target / f"part-{i:05d}.parquet", index=False)
    else:
        df.to_parquet(target, index=False)
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:  # in-process: no CLI start-up per call
            dvc_repo.add(str(target.resolve()))
            _run(repo, "git", "add", f"{path}.dvc", str(Path(path).parent / ".gitignore"))
            _run(repo, "git", "commit", "-q", "-m", message)
            dvc_repo.push(targets=[str(target.resolve())])
    except DvcException as exc:
        raise DataError(f"dvc add/push of {path} failed in {repo}: {exc}") from exc
    return _git(str(repo), "rev-parse", "HEAD").strip()


def _run(cwd: Path, *cmd: str) -> None:
    exe = cmd[0]
    if exe == "dvc":  # the dvc of this interpreter's environment, even when not on PATH
        found = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
        cmd = (found, *cmd[1:])
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr.strip()[-500:]}")
