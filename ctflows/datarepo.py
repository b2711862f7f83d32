"""A model's data in a git+DVC data repository: checked, placed, added, committed and pushed.

`ctflows init` places the trusted batch here so that the data section it writes runs as
written: ``data.repo`` is a git repository with DVC, ``data.path`` is DVC-tracked at HEAD and
its bytes are on the repository's default DVC remote. ``create`` makes a new repository
(``git init``, ``dvc init``, a local remote beside it: ``<repo>-dvc-remote``). Everything that
can be checked is checked before anything is written; a failure on the way removes what was
written (the copy, its ``.dvc`` file).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ctflows.operate import Refused

if TYPE_CHECKING:
    import pandas as pd

DEADLINE_SECONDS = 300


@dataclass(frozen=True)
class Placed:
    repo: Path
    path: str  # inside the repository, POSIX
    rev: str  # the commit that tracks it
    md5: str  # DVC's md5 of the file: the data version's identity
    created: bool  # the repository was created here


def _run(args: list[str], cwd: Path, what: str) -> str:
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise Refused(f"{what}: no answer within {DEADLINE_SECONDS} s ({' '.join(args)})") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise Refused(f"{what} failed: {' '.join(detail[-3:]) or f'exit {done.returncode}'}")
    return done.stdout


def _git(repo: Path, *args: str, what: str = "git") -> str:
    return _run(
        ["git", "-c", "user.name=ctflows", "-c", "user.email=ctflows@localhost", *args], repo, what
    )


def _dvc(repo: Path, *args: str, what: str = "dvc") -> str:
    return _run([sys.executable, "-m", "dvc", *args], repo, what)


def check_target(repo: Path, path: str, create: bool, new: bool = True) -> None:
    """Refused (nothing written) when ``path`` cannot become a DVC-tracked file of ``repo``
    (``new``: a file it does not have yet; else the next version of a ``.dvc``-tracked one)."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise Refused(f"--path {path!r}: a path inside the data repository, like data/wine.parquet")
    if pure.suffix not in {".parquet", ".pq"}:
        raise Refused(
            f"--path {path!r}: runs read Parquet; name it {pure.with_suffix('.parquet')} "
            "(a CSV batch is written as Parquet, its dates parsed)"
        )
    if not repo.exists():
        if create:
            return
        raise Refused(
            f"data repository {repo} does not exist: pass --create-repo to make one (git init, "
            "dvc init, a local DVC remote beside it), or name an existing one with --repo"
        )
    if not (repo / ".git").exists() or not (repo / ".dvc").is_dir():
        raise Refused(
            f"{repo} is not a git repository with DVC: run `git init && dvc init` there (and "
            "`dvc remote add -d <name> <url>`), or pass another --repo"
        )
    if _git(repo, "ls-files", "--", path).strip():
        raise Refused(f"{path} is tracked by git in {repo}: DVC cannot add it; pick another --path")
    target = repo / path
    if not new and not (repo / f"{path}.dvc").exists():
        raise Refused(
            f"{path} is not tracked by a .dvc file in {repo} (an output of a dvc.yaml stage, "
            "or not tracked yet): land it with that stage (dvc repro), or dvc add it first"
        )
    if new and (target.exists() or (repo / f"{path}.dvc").exists()):
        raise Refused(
            f"{target} already exists in the data repository: pick another --path (a new "
            "version of a model's data is landed with dvc add, git commit, dvc push)"
        )
    if not _dvc(repo, "remote", "default", what="dvc remote default").strip():
        raise Refused(
            f"{repo} has no default DVC remote: the data could not be pushed; add one with "
            "`dvc remote add -d <name> <url>` there"
        )


def create_repo(repo: Path) -> Path:
    """``git init`` + ``dvc init`` + a default local remote ``<repo>-dvc-remote``."""
    remote = repo.parent / f"{repo.name}-dvc-remote"
    repo.mkdir(parents=True)
    remote.mkdir(exist_ok=True)
    _git(repo, "init", "-q", "-b", "main", what="git init")
    _dvc(repo, "init", "-q", what="dvc init")
    _dvc(repo, "remote", "add", "-d", "local", str(remote), what="dvc remote add")
    _git(repo, "add", ".dvc", ".dvcignore", what="git add")
    _git(repo, "commit", "-q", "-m", "dvc init (ctflows init)", what="git commit")
    return remote


def place(
    df: pd.DataFrame, repo: Path, path: str, create: bool, message: str, new: bool = True
) -> Placed:
    """Write ``df`` as Parquet at ``repo/path``, DVC-add it, commit the pointer, push the bytes."""
    repo = repo.resolve()
    check_target(repo, path, create, new)
    created = not repo.exists()
    if created:
        create_repo(repo)
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(target, index=False)
    try:
        _dvc(repo, "add", "-q", path, what=f"dvc add {path}")
        pointer = f"{path}.dvc"
        ignore = str(PurePosixPath(path).parent / ".gitignore")
        _git(repo, "add", "--", pointer, ignore, what="git add")
        _git(repo, "commit", "-q", "-m", message, "--", pointer, ignore, what="git commit")
        _dvc(repo, "push", "-q", pointer, what="dvc push")
    except Refused:
        if new:
            target.unlink(missing_ok=True)
            (repo / f"{path}.dvc").unlink(missing_ok=True)
        else:  # the pointer back at the version it had
            subprocess.run(["git", "checkout", "-q", "--", f"{path}.dvc"], cwd=repo, check=False)
        if created:
            shutil.rmtree(repo, ignore_errors=True)
        raise
    rev = _git(repo, "rev-parse", "HEAD").strip()
    import yaml

    meta = yaml.safe_load((repo / f"{path}.dvc").read_text())
    return Placed(repo, path, rev, str(meta["outs"][0]["md5"]), created)
