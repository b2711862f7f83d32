"""What a /predict body must hold, checked record by record against the model's signature.

A body is ``{"records": [{field: value, ...}, ...]}``, at least one record. Each record is
checked on its own (never the union of the batch's keys) against the signature's columns:

- every column of the signature must be present as a key in every record (a missing key is
  a typo or a client bug, not a missing value);
- JSON ``null`` is the one way to say *missing*: the model sees it as it saw missing values in
  training (NaN for numbers, a null category);
- ``double``/``float`` columns take JSON numbers (integers within the float range too), not
  booleans, strings, lists or objects; ``long``/``integer`` columns take integers in the
  64-bit (``integer``: 32-bit) range, or numbers with no fractional part (``3.0``);
- ``string`` columns take JSON strings: any string, also a category the model never saw in
  training (the model's encoder scores it as missing, like ``null``);
- ``boolean`` columns take ``true``/``false``; ``datetime`` and ``binary`` take strings;
- non-finite numbers — ``NaN``, ``Infinity``, ``-Infinity`` and literals past the float range
  such as ``1e400`` — are refused anywhere in a record, also in fields the model does not use,
  because JSON cannot log them as received;
- fields the signature does not name are kept (logged as received, for a join key such as
  ``customer_id``) and not given to the model.

One bad record refuses the whole request (422): the answer names each record index and field
(the first ``MAX_LISTED`` problems, and how many there are). Kept free of the app and of
pandas so that it can be called, and replaced, on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LISTED = 20
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
MISSING = object()


@dataclass(frozen=True)
class Problem:
    """What is wrong with one record (``field`` None: the record as a whole)."""

    record: int
    field: str | None
    problem: str

    def line(self) -> str:
        where = f"record {self.record}" + (f" field {self.field!r}" if self.field else "")
        return f"{where}: {self.problem}"


class RecordsRefused(ValueError):
    """The body cannot be scored as sent: 422 with every problem found (the first listed)."""

    status_code = 422

    def __init__(self, problems: Sequence[Problem], records: int) -> None:
        self.problems = tuple(problems)
        self.records = records
        super().__init__(self.summary())

    def summary(self) -> str:
        refused = len({p.record for p in self.problems if p.record >= 0})
        shown = "; ".join(
            p.line() if p.record >= 0 else p.problem for p in self.problems[:MAX_LISTED]
        )
        more = len(self.problems) - MAX_LISTED
        tail = f"; and {more} more problems" if more > 0 else ""
        expected = ' (expected {"records": [{feature: value, ...}, ...]}, see GET /model)'
        head = f"{refused} of {self.records} records refused: " if refused else ""
        return f"{head}{shown}{tail}{expected}"

    def body(self) -> dict[str, Any]:
        return {
            "detail": self.summary(),
            "problems": [
                {"record": p.record, "field": p.field, "problem": p.problem}
                for p in self.problems[:MAX_LISTED]
            ],
            "problem_count": len(self.problems),
        }


@dataclass(frozen=True)
class Column:
    """One input column of the model's signature: its name and MLflow type name."""

    name: str
    type: str  # double, float, long, integer, string, boolean, datetime, binary


@dataclass(frozen=True)
class CheckedRecords:
    """Records that passed: as received (for the log) and as columns for the model."""

    records: list[dict[str, Any]]
    columns: dict[str, list[Any]]  # signature order; None where missing


def _number(value: Any) -> tuple[Any, str | None]:
    kind = type(value)
    if kind is float:
        return value, None if math.isfinite(value) else _NON_FINITE
    if kind is int:
        try:
            return float(value), None
        except OverflowError:
            return None, "integer beyond the float range"
    return None, f"expected a number, got {_name(value)}"


def _integer(bounds: tuple[int, int]) -> Callable[[Any], tuple[Any, str | None]]:
    low, high = bounds

    def check(value: Any) -> tuple[Any, str | None]:
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return None, _NON_FINITE
            if not value.is_integer():
                return None, f"expected an integer, got the fraction {value!r}"
            value = int(value)
        elif kind is not int:
            return None, f"expected an integer, got {_name(value)}"
        if not low <= value <= high:
            return None, f"integer outside [{low}, {high}]"
        return value, None

    return check


def _string(value: Any) -> tuple[Any, str | None]:
    if type(value) is str:
        return value, None
    return None, f"expected a string, got {_name(value)}"


def _boolean(value: Any) -> tuple[Any, str | None]:
    if type(value) is bool:
        return value, None
    return None, f"expected true or false, got {_name(value)}"


CHECKS: dict[str, Callable[[Any], tuple[Any, str | None]]] = {
    "double": _number,
    "float": _number,
    "long": _integer(INT64),
    "integer": _integer(INT32),
    "string": _string,
    "datetime": _string,
    "binary": _string,
    "boolean": _boolean,
}
_NON_FINITE = "non-finite number (NaN, Infinity or past the float range, e.g. 1e400) refused"


def _name(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"the {type(value).__name__} {value!r}"


class RecordSchema:
    """The model's input columns and the per-record check of a /predict body."""

    def __init__(self, columns: Iterable[Column]) -> None:
        self.columns = tuple(columns)
        unknown = sorted({c.type for c in self.columns} - set(CHECKS))
        if unknown:
            raise ValueError(
                f"signature column types {unknown} are not supported: {sorted(CHECKS)}"
            )
        self._checks = [(c.name, CHECKS[c.type]) for c in self.columns]

    @classmethod
    def from_mlflow(cls, schema: Any) -> RecordSchema:
        """From an ``mlflow.types.Schema`` of named columns (None: no signature, no check)."""
        if schema is None:
            return cls(())
        return cls(Column(c.name, _type_name(c.type)) for c in schema.inputs)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def check(self, records: Any) -> CheckedRecords:
        """The records as columns, or ``RecordsRefused`` naming every bad record and field."""
        if not isinstance(records, list) or not records:
            raise RecordsRefused([Problem(-1, None, "'records' must be a non-empty list")], 0)
        problems: list[Problem] = []
        columns: dict[str, list[Any]] = {name: [] for name, _ in self._checks}
        known = set(columns)
        lacking: dict[tuple[str, ...], list[int]] = {}
        for i, record in enumerate(records):
            if type(record) is not dict:
                problems.append(Problem(i, None, f"expected an object, got {_name(record)}"))
                continue
            absent = []
            for name, check in self._checks:
                value = record.get(name, MISSING)
                if value is None:
                    columns[name].append(None)
                    continue
                if value is MISSING:
                    absent.append(name)
                    continue
                plain, problem = check(value)
                if problem is not None:
                    problems.append(Problem(i, name, problem))
                columns[name].append(plain)
            if absent:
                lacking.setdefault(tuple(absent), []).append(i)
            if len(record) > len(known) - len(absent):  # fields the model does not use
                for field, value in record.items():
                    if field not in known and not _finite(value):
                        problems.append(Problem(i, field, _NON_FINITE))
        for absent_names, indices in lacking.items():
            problems.extend(
                Problem(i, None, f"lacks features {list(absent_names)}") for i in indices
            )
        if problems:
            problems.sort(key=lambda p: p.record)
            raise RecordsRefused(problems, len(records))
        return CheckedRecords(records, columns)


def column_arrays(schema: RecordSchema, checked: CheckedRecords) -> dict[str, Any]:
    """The checked columns as numpy arrays the model's frame is built from without a second
    type inference: float64 (NaN where missing) for numbers and for integers with a missing
    value, int64 for complete integer columns, object for strings and booleans."""
    import numpy as np

    arrays: dict[str, Any] = {}
    for column in schema.columns:
        values = checked.columns[column.name]
        if column.type in {"double", "float"}:
            arrays[column.name] = np.array(values, dtype=np.float64)  # None -> NaN
        elif column.type in {"long", "integer"}:
            complete = None not in values
            arrays[column.name] = np.array(values, dtype=np.int64 if complete else np.float64)
        else:
            arrays[column.name] = np.array(values, dtype=object)
    return arrays


def parse_body(body: bytes) -> list[Any]:
    """The ``records`` of a JSON body, or ``RecordsRefused`` saying why there are none.

    Parsed as ``json.loads`` would, but one record at a time: a long body never holds the
    interpreter for the whole parse, so other requests (``/health``) are answered meanwhile."""
    try:
        text = body.decode("utf-8")
        return _records(text)
    except RecordsRefused:
        raise
    except StopIteration as stop:  # the scanner's "no value at this position"
        problem = f"the body is not JSON: expecting a value at char {stop.value}"
        raise RecordsRefused([Problem(-1, None, problem)], 0) from None
    except RecursionError:
        raise RecordsRefused([Problem(-1, None, "the JSON is nested too deeply")], 0) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordsRefused([Problem(-1, None, f"the body is not JSON: {exc}")], 0) from None


_DECODER = json.JSONDecoder()
_SPACE = json.decoder.WHITESPACE  # type: ignore[attr-defined]


def _records(text: str) -> list[Any]:
    scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
    space = _SPACE.match
    i = space(text, 0).end()
    if text[i : i + 1] != "{":
        raise RecordsRefused([Problem(-1, None, "the body must be an object with 'records'")], 0)
    fields: dict[str, Any] = {}
    i = space(text, i + 1).end()
    while text[i : i + 1] != "}":
        if fields:
            if text[i : i + 1] != ",":
                raise json.JSONDecodeError("expected ',' or '}'", text, i)
            i = space(text, i + 1).end()
        if text[i : i + 1] != '"':
            raise json.JSONDecodeError("expected a property name in double quotes", text, i)
        key, i = scan(text, i)
        i = space(text, i).end()
        if text[i : i + 1] != ":":
            raise json.JSONDecodeError("expected ':'", text, i)
        i = space(text, i + 1).end()
        if key == "records" and text[i : i + 1] == "[":
            value: Any = []
            i = space(text, i + 1).end()
            while text[i : i + 1] != "]":
                if value:
                    if text[i : i + 1] != ",":
                        raise json.JSONDecodeError("expected ',' or ']'", text, i)
                    i = space(text, i + 1).end()
                item, i = scan(text, i)
                value.append(item)
                i = space(text, i).end()
            i += 1
        else:
            value, i = scan(text, i)
        fields[key] = value
        i = space(text, i).end()
    if space(text, i + 1).end() != len(text):
        raise json.JSONDecodeError("extra data after the object", text, i + 1)
    if "records" not in fields:
        raise RecordsRefused([Problem(-1, None, "the body must be an object with 'records'")], 0)
    records = fields["records"]
    if not isinstance(records, list):
        raise RecordsRefused([Problem(-1, None, "'records' must be a non-empty list")], 0)
    return records


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere inside ``value`` (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is float:
            if not math.isfinite(item):
                return False
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _type_name(data_type: Any) -> str:
    name = getattr(data_type, "name", None) or str(data_type)
    return str(name).rsplit(".", 1)[-1]
