"""Stage `prepare` and `pull`: the synthetic churn batches and DVC-versioned data."""

from __future__ import annotations

import argparse
import functools
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DataParams, load_params

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

EPOCH = "2026-01-01"  # batches start here; timestamps are naive UTC
CONTRACTS = ("month-to-month", "one-year", "two-year")
PAYMENT_METHODS = ("card", "bank-transfer", "electronic-check", "mailed-check")
INTERNET_SERVICES = ("dsl", "fiber", "none")
REGIONS = ("north", "south", "east", "west", "central")
PLAN_TIERS = ("basic", "standard", "premium")
GENDERS = ("female", "male", "nonbinary")


class DataError(RuntimeError):
    """The requested data version cannot be found, fetched or read."""


@dataclass(frozen=True)
class DataVersion:
    """One DVC-tracked file at one git revision; ``md5`` is its identity."""

    repo: str
    path: str
    rev: str
    md5: str
    local_path: Path | None = None

    @property
    def short(self) -> str:
        return self.md5[:10]


def make_batch(day: int, rows: int, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """One day of customer-churn records, deterministic in (day, rows, seed, drift).

    ``drift`` moves both the feature distributions (covariate drift: more month-to-month
    contracts, higher charges, fewer sessions) and the label mechanism (concept drift:
    support tickets matter more, tenure less), in proportion to its value.
    """
    import pandas as pd

    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng([seed, day, 20261122])
    n = rows

    contract = rng.choice(len(CONTRACTS), n, p=_shift([0.5, 0.3, 0.2], drift))
    payment = rng.choice(len(PAYMENT_METHODS), n, p=[0.35, 0.25, 0.3, 0.1])
    internet = rng.choice(len(INTERNET_SERVICES), n, p=_shift([0.35, 0.5, 0.15], drift * 0.5))
    region = rng.choice(len(REGIONS), n, p=[0.2, 0.25, 0.2, 0.2, 0.15])
    tier = rng.choice(len(PLAN_TIERS), n, p=[0.45, 0.35, 0.2])
    gender = rng.choice(len(GENDERS), n, p=[0.49, 0.49, 0.02])

    tenure = np.clip(rng.gamma(2.0, 12.0 + 6.0 * contract, n), 0, 72).round().astype(np.int64)
    monthly = np.clip(
        rng.normal(45 + 20 * (internet == 1) + 15 * tier + 10 * drift, 12, n), 18, 120
    ).round(2)
    total = (monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.0, n)).round(2)
    tickets = rng.poisson(0.8 + 0.6 * (internet == 1) + 0.5 * drift, n).clip(0, 20)
    session_minutes = np.clip(rng.lognormal(2.8 - 0.2 * drift, 0.5, n), 0.5, 240).round(1)
    sessions = rng.poisson(np.maximum(18 - 4 * drift - 0.1 * tickets, 1), n).clip(0, 120)
    last_login = np.clip(rng.exponential(6 + 4 * drift, n), 0, 365).round().astype(np.int64)
    late = rng.poisson(0.3 + 0.4 * (payment == 2), n).clip(0, 12)
    usage = np.clip(rng.gamma(2.0, 15 + 20 * (internet == 1), n), 0, 1000).round(2)
    devices = rng.integers(1, 8, n)
    satisfaction = np.clip(np.round(rng.normal(3.6 - 0.25 * tickets, 0.9, n)), 1, 5).astype(
        np.int64
    )
    discount = rng.choice([0.0, 5.0, 10.0, 15.0, 20.0], n, p=[0.6, 0.15, 0.12, 0.08, 0.05])
    age = rng.integers(18, 90, n)

    logit = (
        -1.6
        + 1.3 * (contract == 0)
        - 0.9 * (contract == 2)
        - (0.045 - 0.02 * drift) * np.minimum(tenure, 60)
        + 0.018 * (monthly - 60)
        + (0.30 + 0.25 * drift) * tickets
        - 0.035 * sessions
        + 0.045 * last_login
        + 0.35 * late
        - 0.45 * (satisfaction - 3)
        + 0.45 * (payment == 2)
        + 0.3 * (internet == 1)
        - 0.03 * discount
        - 0.3 * (tier == 2)
        + 0.004 * (age - 45)
        + rng.normal(0, 0.6, n)
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    seconds = np.sort(rng.integers(0, 86_400, n))

    return pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64) + 10_000_000 * (day + 1) + seed * 100,
            "event_time": pd.Timestamp(EPOCH)
            + pd.Timedelta(days=day)
            + pd.to_timedelta(seconds, unit="s"),
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_tickets_90d": tickets.astype(np.int64),
            "avg_session_minutes": session_minutes,
            "sessions_30d": sessions.astype(np.int64),
            "days_since_last_login": last_login,
            "late_payments_12m": late.astype(np.int64),
            "data_usage_gb": usage,
            "devices": devices.astype(np.int64),
            "satisfaction_score": satisfaction,
            "discount_pct": discount,
            "age": age.astype(np.int64),
            "contract": np.asarray(CONTRACTS, dtype=object)[contract],
            "payment_method": np.asarray(PAYMENT_METHODS, dtype=object)[payment],
            "internet_service": np.asarray(INTERNET_SERVICES, dtype=object)[internet],
            "region": np.asarray(REGIONS, dtype=object)[region],
            "plan_tier": np.asarray(PLAN_TIERS, dtype=object)[tier],
            "gender": np.asarray(GENDERS, dtype=object)[gender],
            "churned": churned,
        }
    )


def corrupt_batch(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A broken copy of ``df`` as upstream bugs produce it (for demos and tests):
    nulls in a feature, negative tenures, an unknown contract type and duplicated customers."""
    rng = np.random.default_rng(seed)
    bad = df.copy()
    n = len(bad)
    rows = lambda share: rng.choice(n, max(1, int(n * share)), replace=False)  # noqa: E731
    bad["monthly_charges"] = bad["monthly_charges"].astype("float64")
    bad.loc[rows(0.05), "monthly_charges"] = np.nan
    bad.loc[rows(0.02), "tenure_months"] = -1
    bad.loc[rows(0.01), "contract"] = "weekly"
    dup = rows(0.01)
    bad.loc[dup, "customer_id"] = bad["customer_id"].iloc[0]
    return bad


def _shift(probs: list[float], drift: float) -> list[float]:
    """Move probability mass toward the first category in proportion to ``drift``."""
    p = np.asarray(probs, dtype=float)
    moved = p[1:] * min(drift, 1.0) * 0.5
    p[1:] -= moved
    p[0] += moved.sum()
    return list(p / p.sum())


def split_holdout(df: pd.DataFrame, data: DataParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/holdout split on a hash of the id column, stable across batches."""
    import pandas as pd

    key = pd.util.hash_pandas_object(df[data.id_column], index=False, hash_key=_hash_key(data))
    cutoff = np.uint64(int(data.holdout_fraction * 2**64))
    is_holdout = key.to_numpy() < cutoff
    return df.loc[~is_holdout].reset_index(drop=True), df.loc[is_holdout].reset_index(drop=True)


def _hash_key(data: DataParams) -> str:
    return f"{data.split_seed:016d}"[-16:]


def read_batch(path: Path) -> pd.DataFrame:
    """Read a parquet batch; a missing, truncated or non-parquet file is a DataError naming it."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise DataError(f"data file {path} does not exist") from exc
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(
            f"data file {path} is unreadable ({type(exc).__name__}: {exc}); "
            "is it a complete parquet file? Re-run `dvc push` from where it was produced."
        ) from exc


@functools.lru_cache(maxsize=2)
def read_version(version: DataVersion) -> pd.DataFrame:
    """The pulled batch of ``version``, read once per process and shared by the stages.

    Safe to share because DVC objects are content-addressed: the md5 pins the bytes.
    Callers must not modify the frame in place.
    """
    if version.local_path is None:
        raise DataError(f"{version.path}@{version.rev[:10]} has not been pulled yet")
    return read_batch(version.local_path)


def _git(repo: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def resolve_version(repo: str, path: str, rev: str) -> DataVersion:
    """Find the DVC md5 of ``path`` at git revision ``rev`` without fetching any data.

    Reads ``<path>.dvc`` or, for a pipeline output, ``dvc.lock`` at that revision.
    """
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    try:
        meta = yaml.safe_load(_git(repo, "show", f"{commit}:{path}.dvc"))
        outs = meta.get("outs", []) if isinstance(meta, dict) else []
    except DataError:
        outs = _lock_outs(repo, commit)
    for out in outs:
        if Path(out.get("path", "")).name == Path(path).name or out.get("path") == path:
            md5 = out.get("md5")
            if md5:
                return DataVersion(repo=repo, path=path, rev=commit, md5=str(md5))
    raise DataError(
        f"{path} is not tracked by DVC at {rev} ({commit[:10]}) in {repo}: "
        f"expected {path}.dvc or a dvc.lock output; run `dvc add {path}` and commit"
    )


def _lock_outs(repo: str, commit: str) -> list[dict[str, object]]:
    try:
        lock = yaml.safe_load(_git(repo, "show", f"{commit}:dvc.lock")) or {}
    except DataError:
        return []
    return [out for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])]


def fetch_version(version: DataVersion) -> DataVersion:
    """``dvc fetch`` the object of ``version`` into the repository's cache and return its path."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(version.repo) as repo:
            cached = Path(repo.cache.local.oid_to_path(version.md5))
            if not cached.exists():
                repo.fetch(targets=[version.path], revs=[version.rev], workspace=False)
    except DvcException as exc:
        raise DataError(f"dvc fetch of {version.path}@{version.rev[:10]} failed: {exc}") from exc
    if not cached.exists():
        raise DataError(
            f"DVC object {version.md5} for {version.path}@{version.rev[:10]} is in no remote: "
            "run `dvc push` where the data was produced"
        )
    return DataVersion(version.repo, version.path, version.rev, version.md5, cached)


def init_data_repo(repo: Path, remote: Path) -> None:
    """A git+DVC repository whose default DVC remote is the local directory ``remote``."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _run(repo, "git", "init", "-q", "-b", "main")
        _run(repo, "git", "config", "user.email", "ctflows@localhost")
        _run(repo, "git", "config", "user.name", "ctflows")
    if not (repo / ".dvc").exists():
        _run(repo, "dvc", "init", "-q")
        _run(repo, "dvc", "config", "core.autostage", "true")
        _run(repo, "dvc", "remote", "add", "-d", "-f", "local", str(remote.resolve()))
        _run(repo, "git", "commit", "-q", "-m", "Initialize DVC")


def publish_batch(repo: Path, df: pd.DataFrame, path: str, message: str) -> str:
    """Write ``df`` at ``path``, ``dvc add`` + commit + ``dvc push`` it; return the commit."""
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(target, index=False)
    _run(repo, "dvc", "add", "-q", path)
    _run(repo, "git", "add", f"{path}.dvc")
    _run(repo, "git", "commit", "-q", "-m", message)
    _run(repo, "dvc", "push", "-q", path)
    return _git(str(repo), "rev-parse", "HEAD").strip()


def _run(cwd: Path, *cmd: str) -> None:
    import shutil
    import sys

    exe = cmd[0]
    if exe == "dvc":  # the dvc of this interpreter's environment, even when not on PATH
        found = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
        cmd = (found, *cmd[1:])
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr.strip()[-500:]}")


@task(name="resolve-data", cache_policy=NONE)
def resolve_data(repo: str, path: str, rev: str, expected_md5: str | None = None) -> DataVersion:
    """The data's identity (DVC md5) at ``rev``, read from git without fetching the data."""
    version = resolve_version(repo, path, rev)
    if expected_md5 and expected_md5 != "None" and expected_md5 != version.md5:
        raise DataError(
            f"{path}@{rev} holds md5 {version.md5}, not the {expected_md5} the caller announced"
        )
    get_run_logger().info("%s@%s is md5=%s", path, version.rev[:10], version.md5)
    return version


@task(name="pull-data", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def pull_data(version: DataVersion) -> DataVersion:
    """Pull the version's object from the DVC remote into the local cache."""
    pulled = fetch_version(version)
    get_run_logger().info("pulled md5=%s to %s", pulled.md5, pulled.local_path)
    return pulled


def main(argv: list[str] | None = None) -> None:
    """dvc.yaml stage `prepare`: write the synthetic batch described by params.yaml."""
    parser = argparse.ArgumentParser(description="Write one synthetic churn batch as parquet.")
    parser.add_argument("output", type=Path, help="parquet file to write")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    prep = load_params(args.params).prepare
    df = make_batch(prep.day, prep.rows, prep.seed, prep.drift)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.output, index=False)
    print(f"wrote {len(df)} rows of day {prep.day} to {args.output}")


if __name__ == "__main__":
    main()
