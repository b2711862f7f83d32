"""Stage `prepare` and `pull`: the synthetic churn batches and DVC-versioned data.

Resolving and fetching versions through git and DVC lives in ``tasks.data_versions``; this
module reads them, checks their columns against params and splits the holdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DataParams, Params, load_params
from tasks.data_versions import (  # re-exported: the data stage's public names
    DataError,
    DataVersion,
    MissingDataError,
    fetch_version,
    init_data_repo,
    publish_batch,
    resolve_version,
)
from tasks.services import REDACTED, redact

__all__ = [
    "DataError",
    "DataVersion",
    "MissingColumnsError",
    "MissingDataError",
    "check_columns",
    "fetch_version",
    "init_data_repo",
    "publish_batch",
    "read_batch",
    "read_version",
    "resolve_version",
    "split_holdout",
]

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
    """Deterministic train/holdout split, stable across batches and row order.

    On a hash of ``data.id_column``, so a customer stays on one side; with no id column, on a
    hash of the whole row (identical rows land on the same side).
    """
    import pandas as pd

    keyed = df[data.id_column] if data.id_column is not None else df
    key = pd.util.hash_pandas_object(keyed, index=False, hash_key=_hash_key(data))
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


class MissingColumnsError(DataError):
    """Columns that params name are not in the data: found before validation or training."""

    def __init__(self, missing: dict[str, str], where: str, columns: list[str]) -> None:
        self.missing = missing
        named = ", ".join(f"{key} = {column!r}" for key, column in missing.items())
        shown = ", ".join(columns[:40]) + (" ..." if len(columns) > 40 else "")
        super().__init__(
            f"{where} lacks the column(s) params.yaml names: {named}. The data has: {shown}. "
            "Fix those keys in params.yaml (id, timestamp and sensitive columns may be null)."
        )


def required_columns(params: Params) -> dict[str, str]:
    """Every column the run will read, keyed by the params key naming it."""
    columns = params.data.configured_columns()
    fairness = params.gates.fairness
    if fairness.enabled and fairness.sensitive_column is not None:
        for i, column in enumerate(fairness.slice_columns):
            columns[f"gates.fairness.slice_columns[{i}]"] = column
    return columns


def check_columns(columns: list[str], params: Params, where: str = "the data") -> None:
    """Raise MissingColumnsError naming every params key whose column ``columns`` lacks."""
    present = set(columns)
    missing = {key: col for key, col in required_columns(params).items() if col not in present}
    if missing:
        raise MissingColumnsError(missing, where, list(columns))


def batch_columns(path: Path) -> list[str]:
    """Column names from the Parquet footer, without reading the data; of a directory of
    Parquet parts, its first part's (the Dask engine checks that every part agrees)."""
    import pyarrow.parquet as pq

    if path.is_dir():
        parts = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not parts:
            raise DataError(f"data directory {path} holds no Parquet parts (*.parquet)")
        path = parts[0]
    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"data file {path} is unreadable ({type(exc).__name__}: {exc})") from exc


@functools.lru_cache(maxsize=2)
def read_version(version: DataVersion) -> pd.DataFrame:
    """The pulled rows of ``version``'s training window (oldest version first), read once per
    process and shared by the stages.

    Safe to share because DVC objects are content-addressed: the md5 pins the bytes.
    Callers must not modify the frame in place.
    """
    import pandas as pd

    frames = []
    for member in reversed(version.window):
        if member.local_path is None:
            raise DataError(f"{member.describe()} has not been pulled yet")
        frames.append(read_batch(member.local_path))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def lineage_tags(version: DataVersion) -> dict[str, str]:
    """MLflow tags naming the data a run trained on: the newest version and every one used."""
    used = json.dumps([{"rev": v.rev, "md5": v.md5} for v in version.window], separators=(",", ":"))
    if len(used) > 5000:  # MLflow's tag limit: 12-character revisions still name each commit
        used = json.dumps([f"{v.rev[:12]}:{v.md5}" for v in version.window], separators=(",", ":"))
    return {
        "ct.data_md5": version.md5,
        "ct.data_repo": redact(version.repo),  # credentials come back at read: repo_from_lineage
        "ct.data_path": version.path,
        "ct.data_rev": version.rev,
        "ct.data_window": str(len(version.window)),
        "ct.data_versions": used,
    }


def repo_from_lineage(stored: str, params: Params) -> str:
    """The repository to re-open from a run's ``ct.data_repo`` tag, which holds it redacted.

    The credentials are those of ``data.repo`` in params (itself from the environment or a
    secret, never from the tracking store) when it names the same repository; otherwise the
    address without them, for git's own credential helper or environment to authenticate."""
    if REDACTED not in stored:
        return stored
    if redact(params.data.repo) == stored:
        return params.data.repo
    log.warning(
        "the data repository %s is not data.repo in params: opened without credentials", stored
    )
    return stored.replace(f"{REDACTED}@", "")


def _retry_unless_missing(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a pull on transient errors, never when the data is in no cache or remote."""
    try:
        state.result()
    except (MissingDataError, MissingColumnsError):
        return False
    except Exception:
        return True
    return True


@task(name="resolve-data", cache_policy=NONE)
def resolve_data(
    repo: str,
    path: str,
    rev: str,
    expected_md5: str | None = None,
    data: DataParams | None = None,
) -> DataVersion:
    """The data's identity (DVC md5) at ``rev`` and, with ``data.window``, of the older versions
    in the training window, read from git (or through DVC for a URL) without fetching data."""
    version = resolve_version(repo, path, rev, data.window if data else None)
    if expected_md5 and expected_md5 != "None" and expected_md5 != version.md5:
        raise DataError(
            f"{path}@{rev} holds md5 {version.md5}, not the {expected_md5} the caller announced"
        )
    logger = get_run_logger()
    logger.info("%s@%s is md5=%s", path, version.rev[:10], version.md5)
    if version.history:
        logger.info(
            "training window: %d versions, %s",
            len(version.window),
            ", ".join(f"{v.rev[:10]}:{v.short}" for v in version.window),
        )
    return version


@task(
    name="pull-data",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_missing,
    cache_policy=NONE,
)
def pull_data(version: DataVersion, params: Params | None = None) -> DataVersion:
    """Pull every version of the window into a local cache and check its columns."""
    pulled = pull_version(version, params)
    logger = get_run_logger()
    for member in pulled.window:
        logger.info("pulled md5=%s to %s", member.md5, member.local_path)
    return pulled


def pull_version(version: DataVersion, params: Params | None = None) -> DataVersion:
    """Fetch every version of the window from the DVC remote and, given params, check that
    each has the columns params name, before anything reads the rows."""
    cache_dir = params.state_dir / "dvc-cache" if params is not None else None
    pulled = fetch_version(version, cache_dir)
    for member in pulled.window:
        if params is not None and member.local_path is not None:
            check_columns(batch_columns(member.local_path), params, member.describe())
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
