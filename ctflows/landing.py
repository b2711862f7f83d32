"""A model's data versions from the command line: the dry check before a run, a new version
landed, and the suite widened from a new trusted batch.

- ``check_data``: params, columns and suite against a data version (``--rev``), no training.
- ``land_data``: a file becomes the model's next data version in its data repository (DVC add,
  commit, push), checked first like ``check_data``; nothing is written when it would fail.
- ``widen_suite``: the suite's bounds widened to admit a new trusted batch (``init --update``):
  ranges extended, value sets united, ``mostly`` lowered; the changes are returned to be shown.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctflows.catalog import Model
from ctflows.datarepo import Placed, place
from ctflows.operate import Refused
from ctflows.profile import profile_frame, read_trusted
from tasks.config import Params
from tasks.data import check_columns, pull_version, read_version
from tasks.data_versions import is_url, resolve_version
from tasks.validate import validate_batch


@dataclass(frozen=True)
class Checked:
    model: str
    repo: str
    path: str
    rev: str
    md5: str
    rows: int
    passed: bool
    summary: str


def _check_frame(params: Params, df: Any, where: str) -> tuple[bool, str]:
    check_columns([str(c) for c in df.columns], params, where)
    result = validate_batch(df, params)
    return result.success, result.summary()


def check_data(model: Model, rev: str | None) -> Checked:
    """The model's params (loaded), the data version's columns and its suite, without training."""
    params = model.params()
    data = params.data
    version = resolve_version(data.repo, data.path, rev or data.rev, data.window)
    pulled = pull_version(version, params)  # fetched from the DVC remote, columns checked
    df = read_version(pulled)
    passed, summary = _check_frame(params, df, version.describe())
    return Checked(
        model.name, data.repo, data.path, version.rev, version.md5, len(df), passed, summary
    )


def land_data(model: Model, source: Path) -> Placed:
    """``source`` as the next version of the model's ``data.path`` in its ``data.repo``."""
    params = model.params()
    data = params.data
    if is_url(data.repo):
        raise Refused(
            f"data.repo {data.repo} is a URL: land the file in a clone of it "
            "(dvc add, git commit, git push, dvc push)"
        )
    df = read_trusted(source)
    passed, summary = _check_frame(params, df, str(source))
    if not passed:
        raise Refused(
            f"{source} breaks {model.name}'s suite ({summary}); nothing landed. If the change is "
            f"legitimate, widen the suite first: ctflows init {model.name} --update --from {source}"
        )
    return place(
        df,
        Path(data.repo),
        data.path,
        create=False,
        message=f"ctflows land {model.name}: {source.name}",
        new=False,
    )


@dataclass(frozen=True)
class Widened:
    suite_file: str
    changes: list[str]


def _key(e: dict[str, Any]) -> tuple[str, str, str]:
    kwargs = e.get("kwargs", {})
    single = kwargs.get("value_set") if isinstance(kwargs.get("value_set"), list) else None
    tag = json.dumps(single, default=str) if single is not None and len(single) == 1 else ""
    return e["type"], str(kwargs.get("column")), tag


def widen(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """``old`` expectations widened to admit what ``new`` (profiled from a trusted batch) found;
    expectations only ``new`` has are not added (the suite stays the one you reviewed)."""
    fresh = {_key(e): e["kwargs"] for e in new}
    out, changes = [], []
    for e in old:
        kwargs = dict(e.get("kwargs", {}))
        other = fresh.get(_key(e))
        if other is not None:
            for bound, pick in (("min_value", min), ("max_value", max)):
                if bound in kwargs and bound in other and kwargs[bound] is not None:
                    value = pick(kwargs[bound], other[bound])
                    if value != kwargs[bound]:
                        changes.append(f"{_name(e)} {bound}: {kwargs[bound]} -> {value}")
                        kwargs[bound] = value
            if "mostly" in kwargs or "mostly" in other:
                value = min(kwargs.get("mostly", 1.0), other.get("mostly", 1.0))
                if value != kwargs.get("mostly", 1.0):
                    changes.append(f"{_name(e)} mostly: {kwargs.get('mostly', 1.0)} -> {value}")
                    kwargs["mostly"] = value
            if isinstance(kwargs.get("value_set"), list) and isinstance(
                other.get("value_set"), list
            ):
                added = [v for v in other["value_set"] if v not in kwargs["value_set"]]
                if added and len(kwargs["value_set"]) != 1:
                    changes.append(f"{_name(e)} value_set: + {added}")
                    kwargs["value_set"] = [*kwargs["value_set"], *added]
        out.append({**e, "kwargs": kwargs})
    return out, changes


def _name(e: dict[str, Any]) -> str:
    column = e.get("kwargs", {}).get("column")
    return f"{e['type']}({column})" if column else e["type"]


def widen_suite(model: Model, source: Path, margin: float = 0.1, write: bool = True) -> Widened:
    """Widen ``model``'s suite from the trusted batch ``source``; written (``write``) only when
    the batch then passes it."""
    params = model.params()
    data = params.data
    suite_file = params.validate_.suite
    suite = json.loads(suite_file.read_text())
    df = read_trusted(source)
    profile = profile_frame(
        df,
        data.label,
        data.id_column or "none",
        data.timestamp_column or "none",
        margin,
        params.train.task,
    )
    expectations, changes = widen(suite["expectations"], profile.expectations)
    widened = {**suite, "expectations": expectations}
    draft = suite_file.with_name(f".{suite_file.name}.draft")
    draft.write_text(json.dumps(widened, indent=1, default=str) + "\n")
    try:
        check = params.model_copy(
            update={"validate_": params.validate_.model_copy(update={"suite": draft})}
        )
        passed, summary = _check_frame(check, df, str(source))
        if not passed:
            raise Refused(
                f"{source} still breaks the widened suite ({summary}): a change widening cannot "
                "cover (a new column, a new type); profile a new model or edit the suite"
            )
        if changes and write:
            draft.replace(suite_file)
    finally:
        draft.unlink(missing_ok=True)
    return Widened(str(suite_file), changes)


def running_receiver(model: Model) -> str | None:
    """The receiver of a running `make serve` of this project ($CTFLOWS_WEBHOOK_URL first)."""
    from deployments.server import recorded_webhook

    return os.environ.get("CTFLOWS_WEBHOOK_URL") or recorded_webhook(model.params().state_dir)


def announce(model: Model, placed: Placed, url: str, timeout: float = 30.0) -> dict[str, Any]:
    """The signed data-landed webhook of ``make serve`` (``url``: the receiver's address) for a
    landed version; the receiver's answer (its flow run), or Refused naming its error."""
    import time
    import urllib.error
    import urllib.request

    from deployments.webhook import sign, webhook_secret

    secret = webhook_secret(model.params())
    body = json.dumps(
        {"path": placed.path, "rev": placed.rev, "md5": placed.md5, "model": model.name}
    ).encode()
    stamp = str(int(time.time()))
    request = urllib.request.Request(
        url.rstrip("/") + "/hooks/data-landed",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Ctflows-Timestamp": stamp,
            "X-Ctflows-Signature": sign(secret, stamp, body),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            payload: dict[str, Any] = json.loads(answer.read() or b"{}")
            return {"status": answer.status, **payload}
    except urllib.error.HTTPError as exc:
        raise Refused(
            f"the receiver at {url} refused the data-landed webhook: {exc.code} "
            f"{exc.read()[:300].decode(errors='replace')}; the data is landed at {placed.rev}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Refused(
            f"the receiver at {url} did not answer ({exc}); the data is landed at "
            f"{placed.rev}: start its run with `ctflows run {model.name} --rev {placed.rev}`"
        ) from exc
