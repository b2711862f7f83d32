"""Reading side of the serving app's inference log, and the labels that arrive later.

The serving app (``deployments/serving/inference_log.py``) writes Parquet files under
``<url>/day=YYYY-MM-DD/model_version=V/``. Reading never crashes on what production leaves
behind: a truncated file, a file from an older schema, a window without traffic, labels for
predictions nobody made are each kept out of the numbers and named in ``notes``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tasks.config import LabelSourceParams

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REQUIRED = ("prediction_id", "time", "model_version", "features", "score")
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "request_id": None,
    "batch_size": 1,
    "model_name": "",
    "image_digest": "",
    "decision": None,
}
DAY = re.compile(r"day=(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class LogWindow:
    """The logged predictions in ``[start, end)``, their inputs parsed, and what was skipped."""

    start: datetime | None
    end: datetime | None
    log: pd.DataFrame  # one row per prediction (no ``features`` column)
    inputs: pd.DataFrame  # the records as received, aligned with ``log``
    files: int
    notes: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.log)


@dataclass(frozen=True)
class LabelledPredictions:
    frame: pd.DataFrame  # prediction_id, time, model_version, score, decision, y
    labels: int  # label rows read
    unmatched: int  # labels whose id no logged prediction has
    notes: tuple[str, ...] = ()


def log_files(url: str, first_day: str | None = None, last_day: str | None = None) -> list[str]:
    """The log's Parquet files, as full URLs, in day order, limited to the days given."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    if not fs.exists(root):
        return []
    found = []
    for path in fs.glob(f"{root}/day=*/model_version=*/*.parquet"):
        match = DAY.search(path)
        if match is None:
            continue
        day = match.group(1)
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        found.append((day, path))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in {"file", "local"} else f"{protocol}://"
    return [prefix + p for _, p in sorted(found)]


def read_log_file(path: str, threshold: float) -> tuple[pd.DataFrame | None, str | None]:
    """One log file as a frame, or None and why it cannot be used."""
    import fsspec
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb") as handle:
            table = pq.read_table(handle)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return None, f"unreadable log file {path} (truncated?): {type(exc).__name__}: {exc}"
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        return None, f"log file {path} has an older schema without {missing}: skipped"
    features = table["features"]
    frame = table.drop_columns(["features"]).to_pandas()
    # the records stay Arrow strings (no Python object per row) until they are parsed
    frame["features"] = pd.arrays.ArrowExtensionArray(features)
    for column, default in OPTIONAL_DEFAULTS.items():
        if column not in frame.columns:
            frame[column] = default
    if frame["decision"].isna().any():
        frame["decision"] = (frame["score"] >= threshold).astype("int8")
    frame["time"] = _as_utc(frame["time"])
    return frame, None


def read_inference_log(
    url: str,
    start: datetime | None,
    end: datetime | None,
    threshold: float = 0.5,
) -> LogWindow:
    """Predictions logged in ``[start, end)`` (aware UTC datetimes; None: unbounded)."""
    import pandas as pd

    first = (start - timedelta(days=1)).strftime("%Y-%m-%d") if start else None
    last = (end + timedelta(days=1)).strftime("%Y-%m-%d") if end else None
    files = log_files(url, first, last)
    frames, notes = [], []
    for path in files:
        frame, problem = read_log_file(path, threshold)
        if problem:
            notes.append(problem)
            log.warning(problem)
        elif frame is not None and len(frame):
            if start is not None:
                frame = frame[frame["time"] >= pd.Timestamp(start)]
            if end is not None:
                frame = frame[frame["time"] < pd.Timestamp(end)]
            frames.append(frame)
    frames = [f for f in frames if len(f)]
    if not frames:
        if files or log_files(url):
            notes.append(f"no predictions logged between {start} and {end} at {url}")
        else:
            notes.append(f"no inference log files at {url}")
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED})
        return LogWindow(
            start, end, empty.drop(columns="features"), pd.DataFrame(), len(files), tuple(notes)
        )
    logged = pd.concat(frames, ignore_index=True)
    duplicated = int(logged["prediction_id"].duplicated().sum())
    if duplicated:
        notes.append(f"{duplicated} predictions logged twice under the same id: first kept")
        logged = logged.drop_duplicates("prediction_id").reset_index(drop=True)
    inputs, problem = parse_records(logged["features"])
    if problem:
        notes.append(problem)
    return LogWindow(start, end, logged.drop(columns="features"), inputs, len(files), tuple(notes))


def read_recent(
    url: str, rows: int, model_version: str | None = None, threshold: float = 0.5
) -> LogWindow:
    """The last ``rows`` logged predictions (of ``model_version`` if given), newest days first."""
    import pandas as pd

    files = log_files(url)
    frames: list[pd.DataFrame] = []
    notes: list[str] = []
    found = 0
    days: dict[str, list[str]] = {}
    for path in files:
        match = DAY.search(path)
        days.setdefault(match.group(1) if match else "", []).append(path)
    for day in sorted(days, reverse=True):  # newest day first, whole days, until enough rows
        for path in days[day]:
            frame, problem = read_log_file(path, threshold)
            if problem:
                notes.append(problem)
            elif frame is not None:
                if model_version is not None:
                    frame = frame[frame["model_version"].astype(str) == model_version]
                frames.append(frame)
                found += len(frame)
        if found >= rows:
            break
    if not files:
        notes.append(f"no inference log files at {url}")
    frames = [f for f in frames if len(f)]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED})
        return LogWindow(
            None, None, empty.drop(columns="features"), pd.DataFrame(), len(files), tuple(notes)
        )
    logged = pd.concat(frames, ignore_index=True).drop_duplicates("prediction_id")
    logged = logged.sort_values("time", kind="stable").tail(rows).reset_index(drop=True)
    inputs, problem = parse_records(logged["features"])
    if problem:
        notes.append(problem)
    start, end = logged["time"].min(), logged["time"].max()
    return LogWindow(start, end, logged.drop(columns="features"), inputs, len(files), tuple(notes))


def parse_records(features: pd.Series | list[str]) -> tuple[pd.DataFrame, str | None]:
    """The logged JSON records as columns: Arrow's JSON reader on the records joined by
    newlines, without a Python object per row; row by row when it refuses."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    if len(features) == 0:
        return pd.DataFrame(), None
    array = pa.array(features, pa.string())
    column = array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])
    try:
        lines = pc.binary_join_element_wise(pc.fill_null(column, "{}"), "", "\n")
        lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
        lines = lines.cast(pa.large_string())
        whole = pa.LargeListArray.from_arrays(pa.array([0, len(lines)], pa.int64()), lines)
        data = pc.binary_join(whole, pa.scalar("", pa.large_string()))[0].as_buffer()
        options = pj.ReadOptions(block_size=8 << 20)  # blocks parsed on Arrow's threads
        parsed = pj.read_json(pa.BufferReader(data), read_options=options)
        if parsed.num_rows == len(features):
            return parsed.to_pandas(), None
    except (pa.ArrowException, ValueError):
        pass
    features = [str(f) if f is not None else "{}" for f in column.to_pylist()]
    rows, bad = [], 0
    for text in features:
        try:
            value = json.loads(text)
            rows.append(value if isinstance(value, dict) else {})
            bad += not isinstance(value, dict)
        except (TypeError, ValueError):
            rows.append({})
            bad += 1
    problem = f"{bad} logged records are not JSON objects: their features count as missing"
    return pd.DataFrame.from_records(rows), problem if bad else None


def read_labels(source: LabelSourceParams) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Ground truth as a frame of ``id, label, time`` (columns renamed), and what was wrong."""
    import fsspec
    import pandas as pd

    columns = {source.id_column: "id", source.label_column: "label", source.time_column: "time"}
    empty = pd.DataFrame({"id": [], "label": [], "time": []})
    if not source.url:
        return empty, ("no label source configured (monitor.labels.url)",)
    fs, root = fsspec.core.url_to_fs(source.url)
    if any(ch in root for ch in "*?["):
        paths = sorted(fs.glob(root))
    elif fs.isdir(root):
        paths = sorted(fs.glob(f"{root.rstrip('/')}/**/*.parquet"))
    else:
        paths = [root] if fs.exists(root) else []
    if not paths:
        return empty, (f"no label files at {source.url}",)
    frames, notes = [], []
    for path in paths:
        try:
            with fs.open(path, "rb") as handle:
                frame = pd.read_parquet(handle)
        except (OSError, ValueError) as exc:
            notes.append(f"unreadable label file {path}: {type(exc).__name__}: {exc}")
            continue
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            notes.append(f"label file {path} lacks columns {missing}: skipped")
            continue
        frames.append(frame[list(columns)].rename(columns=columns))
    if not frames:
        return empty, tuple(notes)
    labels = pd.concat(frames, ignore_index=True)
    labels["id"] = labels["id"].astype(str)
    return labels, tuple(notes)


def join_labels(
    window: LogWindow, labels: pd.DataFrame, key: str, task: str = "binary"
) -> LabelledPredictions:
    """Logged predictions that have a label, joined on ``key`` (a log column or record field).
    Binary labels must be 0/1; multiclass labels are kept as they are (class names);
    regression labels must be numbers."""
    import pandas as pd

    notes: list[str] = []
    columns = ["prediction_id", "time", "model_version", "score", "decision"]
    if key in window.log.columns:
        keys = window.log[key]
    elif key in window.inputs.columns:
        keys = window.inputs[key]
    else:
        if window.rows:
            notes.append(f"join key {key!r} is neither a log column nor a field of the records")
        empty = pd.DataFrame(columns=[*columns, "y"])
        return LabelledPredictions(empty, len(labels), len(labels), tuple(notes))
    predictions = window.log[columns].assign(key=keys.astype(str).to_numpy())
    ids = labels.drop_duplicates("id", keep="last")
    if len(ids) < len(labels):
        notes.append(f"{len(labels) - len(ids)} labels repeat an id: the latest kept")
    known = ids["id"].isin(predictions["key"])
    unmatched = int((~known).sum())
    if unmatched:
        notes.append(f"{unmatched} of {len(ids)} labels are for ids never predicted in the window")
    joined = predictions.merge(
        ids[known][["id", "label"]].rename(columns={"id": "key", "label": "y"}), on="key"
    )
    if task == "multiclass":
        bad = joined["y"].isna()
        what = "missing"
    elif task == "regression":
        joined = joined.assign(y=pd.to_numeric(joined["y"], errors="coerce"))
        bad, what = joined["y"].isna(), "not numbers"
    else:
        bad, what = ~joined["y"].isin([0, 1, True, False]), "not 0/1"
    if bad.any():
        notes.append(f"{int(bad.sum())} labels are {what}: ignored")
        joined = joined[~bad]
    if task == "binary":
        joined = joined.assign(y=joined["y"].astype(int))
    return LabelledPredictions(joined.drop(columns="key"), len(labels), unmatched, tuple(notes))


def _as_utc(times: pd.Series) -> pd.Series:
    import pandas as pd

    converted = pd.to_datetime(times, utc=True)
    return converted
