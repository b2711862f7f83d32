"""Ground truth as the monitor compares it: join keys in one canonical form, the latest label
of an id by its time, and labels encoded as the model's scores index them.

A key is compared as text in one form whatever column type carried it: an integer (also one
that a null turned into a float, ``1.0``) is its decimal digits (``"1"``), a boolean ``"1"`` or
``"0"``, a string itself (never stripped or reparsed: ``"007"`` stays ``"007"``), any other
finite float its shortest repr. A key that cannot be read (null, NaN, an empty string, a list
or an object) is ``None``: it joins nothing, and the caller names how many there were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

INT64_SPAN = 2.0**63


def canonical_key(value: Any) -> str | None:
    """One key in its canonical form, or None when it cannot be read."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if value else None
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            return None
        if number.is_integer() and abs(number) < INT64_SPAN:
            return str(int(number))
        return repr(number)
    return None  # pd.NA, NaT, lists, dicts: not a key


def canonical_keys(values: pd.Series) -> pd.Series:
    """``values`` in canonical form (object dtype, None where unreadable), index kept.

    Vectorised for the column types a log or a label file holds at scale (strings, integers,
    floats); a mixed object column goes value by value."""
    import pandas as pd

    kind = values.dtype.kind if isinstance(values.dtype, np.dtype) else ""
    out = np.full(len(values), None, dtype=object)
    if kind == "f":
        numbers = values.to_numpy(dtype=float)
        finite = np.isfinite(numbers)
        whole = finite & (np.floor(numbers) == numbers) & (np.abs(numbers) < INT64_SPAN)
        out[whole] = numbers[whole].astype(np.int64).astype(str)
        rest = finite & ~whole
        out[rest] = [repr(float(v)) for v in numbers[rest]]
    elif kind in ("i", "u"):
        out[:] = values.to_numpy().astype(str)
    elif kind == "b":
        out[:] = np.where(values.to_numpy(), "1", "0")
    else:
        plain = values.astype(object)
        if all(isinstance(v, str) for v in plain):
            texts = plain.to_numpy()
            out[:] = np.where(texts == "", None, texts)
        else:
            out[:] = [canonical_key(v) for v in plain]
    return pd.Series(out, index=values.index, dtype=object)


@dataclass(frozen=True)
class LatestLabels:
    """One label per readable id, the latest by its ``time``, and what was dropped."""

    frame: pd.DataFrame  # id (canonical), label, time (UTC)
    repeated: int  # rows dropped because a later label of the same id exists
    unreadable_ids: int  # rows whose id cannot be read
    untimed: int  # rows whose time cannot be read (they lose to any timed label of their id)


def latest_labels(labels: pd.DataFrame) -> LatestLabels:
    """The latest label of each id by ``time`` (UTC); equal times: the later row in file order.

    ``labels`` holds ``id`` (any type: put in canonical form here), ``label`` and ``time``."""
    import pandas as pd

    ids = canonical_keys(labels["id"])
    readable = ids.notna().to_numpy()
    times = _utc(labels["time"])
    frame = pd.DataFrame(
        {"id": ids.to_numpy(), "label": labels["label"].to_numpy(), "time": times.to_numpy()}
    )[readable]
    untimed = int(frame["time"].isna().sum())
    ordered = frame.sort_values("time", kind="stable", na_position="first")
    latest = ordered.drop_duplicates("id", keep="last").sort_index()
    return LatestLabels(
        latest.reset_index(drop=True),
        len(frame) - len(latest),
        int((~readable).sum()),
        untimed,
    )


@dataclass(frozen=True)
class EncodedLabels:
    y: np.ndarray  # float (regression) or class index (classification), NaN where not usable
    usable: np.ndarray  # bool per label
    note: str | None


def encode_labels(
    raw: pd.Series, task: str = "binary", classes: Sequence[Any] | None = None
) -> EncodedLabels:
    """Labels as the model's scores index them: a number (regression), the index of the
    class in ``classes`` (the model's ``classes_``; binary default ``[0, 1]``). A label the
    model cannot have is not usable, and the note says how many and what was expected."""
    import pandas as pd

    if task == "regression":
        numbers = pd.to_numeric(raw.astype(object), errors="coerce").to_numpy(dtype=float)
        usable = np.isfinite(numbers)
        bad = int((~usable).sum())
        note = f"{bad} labels are not finite numbers: ignored" if bad else None
        return EncodedLabels(np.where(usable, numbers, np.nan), usable, note)
    names = [canonical_key(c) for c in (classes if classes is not None else (0, 1))]
    index = {name: i for i, name in enumerate(names) if name is not None}
    keys = canonical_keys(raw)
    y = keys.map(index).to_numpy(dtype=float, na_value=np.nan)
    usable = np.isfinite(y)
    bad = int((~usable).sum())
    note = None
    if bad:
        expected = "0/1" if classes is None else f"classes of the model {names}"
        seen = sorted({str(v) for v in raw[~usable].head(1000)})[:5]
        note = f"{bad} labels are not {expected} (e.g. {seen}): ignored"
    return EncodedLabels(y, usable, note)


def _utc(times: pd.Series) -> pd.Series:
    """Times as aware UTC timestamps; what cannot be read is NaT."""
    import pandas as pd

    try:
        return pd.to_datetime(times, utc=True, errors="coerce")
    except (TypeError, ValueError):  # mixed types pandas refuses as a column
        return pd.Series(
            [pd.to_datetime(t, utc=True, errors="coerce") for t in times.astype(object)],
            index=times.index,
            dtype="datetime64[ns, UTC]",
        )
