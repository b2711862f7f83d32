"""Stage `validate`: the batch against the Great Expectations suite kept in the repo."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import ConfigError, Params, load_params
from tasks.data import DataVersion, read_batch, read_version
from tasks.errors import CtflowsError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a person can act on."""

    expectation: str
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.column}: " if self.column else ""
        return f"{where}{self.expectation} — {self.detail}"


@dataclass(frozen=True)
class ValidationResult:
    success: bool
    evaluated: int
    failures: tuple[Failure, ...] = field(default_factory=tuple)

    def summary(self, limit: int = 5) -> str:
        if self.success:
            return f"all {self.evaluated} expectations passed"
        shown = "; ".join(str(f) for f in self.failures[:limit])
        more = f" (+{len(self.failures) - limit} more)" if len(self.failures) > limit else ""
        return f"{len(self.failures)} of {self.evaluated} expectations failed: {shown}{more}"


class DataValidationError(CtflowsError, RuntimeError):
    """The batch broke its data contract; training did not start."""

    def __init__(self, result: ValidationResult, md5: str = "") -> None:
        self.result = result
        self.failures = result.failures
        ident = f" (data md5 {md5})" if md5 else ""
        super().__init__(f"data validation failed{ident}: {result.summary()}")


@dataclass(frozen=True)
class _SuiteFile:
    """Identity of a suite file's content on disk: a changed file is read again."""

    path: Path
    mtime_ns: int
    size: int


def _suite_file(path: Path) -> _SuiteFile:
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"validate.suite {path} does not exist") from exc
    return _SuiteFile(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_suite(file: _SuiteFile) -> Any:
    import great_expectations as gx

    try:
        spec = json.loads(file.path.read_text())
        return gx.ExpectationSuite(
            name=spec.get("name", file.path.stem),
            expectations=spec["expectations"],
            meta=spec.get("meta"),
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"validate.suite {file.path} does not exist") from exc
    except (ValueError, KeyError, TypeError) as exc:  # JSON and GX's pydantic errors
        raise ConfigError(f"validate.suite {file.path} is not a valid GX suite: {exc}") from exc


@functools.lru_cache(maxsize=1)
def _batch_definition() -> Any:
    """One ephemeral GX context per process (no data docs, no files): built once, reused."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # GX's default ephemeral context names a temporary docs site (and logs its path); ctflows
    # never builds data docs, so the context has no site at all.
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    context = gx.get_context(
        project_config=DataContextConfig(store_backend_defaults=stores), mode="ephemeral"
    )
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("ctflows").add_dataframe_asset("batch")
    return asset.add_batch_definition_whole_dataframe("whole-batch")


def load_suite(path: Path) -> Any:
    """The expectation suite stored as GX JSON at ``path``, parsed once per file content.

    The returned suite is shared: callers must not modify it.
    """
    return _load_suite(_suite_file(path))


def _describe(result: Any) -> Failure:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    info = result.result or {}
    exc = result.exception_info or {}
    if exc.get("raised_exception"):
        detail = f"could not be evaluated: {str(exc.get('exception_message')).splitlines()[0]}"
    elif "unexpected_count" in info:
        sample = info.get("partial_unexpected_list") or []
        detail = (
            f"{info['unexpected_count']} rows ({info.get('unexpected_percent') or 0:.2f}%) "
            f"unexpected, e.g. {sample[:3]}"
        )
    elif "observed_value" in info:
        expected = {k: v for k, v in kwargs.items() if k not in {"column", "batch_id"}}
        observed = info["observed_value"]
        if isinstance(observed, list) and len(observed) > 30:
            observed = f"{len(observed)} columns"
        detail = f"observed {observed}, expected {expected}"
    else:
        detail = "failed (no details reported)"
    return Failure(expectation=config.type, column=column, detail=detail)


def validate_batch(df: pd.DataFrame, params: Params) -> ValidationResult:
    """Check ``df`` against the suite in ``params.validate_.suite``; bad data never raises.

    A missing column fails every expectation on it (named), not the whole validation.
    """
    suite = load_suite(params.validate_.suite)
    columns = set(map(str, df.columns))
    missing = sorted(
        {str(e.kwargs["column"]) for e in suite.expectation_configurations if "column" in e.kwargs}
        - columns
    )
    failures: list[Failure] = [
        Failure("expect_column_to_exist", column, "column is missing from the batch")
        for column in missing
    ]
    if missing:
        import great_expectations as gx

        suite = gx.ExpectationSuite(
            name=suite.name,
            expectations=[
                e for e in suite.expectation_configurations if e.kwargs.get("column") not in missing
            ],
        )
    runnable = len(suite.expectations)
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": df})
    # The whole suite in one call, pass/fail only: the lists of unexpected values and rows
    # that SUMMARY builds cost about as much again as the checks themselves on a large batch.
    outcome = batch.validate(suite, result_format="BOOLEAN_ONLY")
    if not outcome.success:
        failures.extend(_details(batch, suite, outcome))
    return ValidationResult(
        success=not failures, evaluated=runnable + len(missing), failures=tuple(failures)
    )


def _details(batch: Any, suite: Any, outcome: Any) -> list[Failure]:
    """Describe the failed expectations: only they are evaluated again, with SUMMARY results."""
    import great_expectations as gx

    failed = [r.expectation_config for r in outcome.results if not r.success]
    again = gx.ExpectationSuite(name=f"{suite.name}-failed", expectations=failed)
    detailed = batch.validate(again, result_format="SUMMARY")
    described = [_describe(r) for r in detailed.results if not r.success]
    if len(described) < len(failed):  # a check that flickered: keep the first verdict
        seen = {(d.expectation, d.column) for d in described}
        described += [
            Failure(c.type, c.kwargs.get("column"), "failed (no details on re-evaluation)")
            for c in failed
            if (c.type, c.kwargs.get("column")) not in seen
        ]
    return described


@task(name="validate-data", cache_policy=NONE)
def validate_data(version: DataVersion, params: Params) -> ValidationResult:
    """Validate the pulled batch; raise DataValidationError so the run stops before training."""
    logger = get_run_logger()
    if params.train.engine == "dask":  # each Parquet part on a worker, whole-batch checks across
        from tasks.dask_engine import validate_on_dask

        result = validate_on_dask(version, params)
    else:
        result = validate_batch(read_version(version), params)
    if not result.success:
        for failure in result.failures:
            logger.error("md5=%s %s", version.short, failure)
        raise DataValidationError(result, version.md5)
    logger.info("md5=%s %s", version.short, result.summary())
    return result


def main(argv: list[str] | None = None) -> None:
    """dvc.yaml stage `validate`: write the validation report; exit 1 when the batch fails."""
    parser = argparse.ArgumentParser(description="Validate a batch with the GX suite.")
    parser.add_argument("batch", type=Path, help="parquet batch to validate")
    parser.add_argument("--report", type=Path, required=True, help="JSON report to write")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    result = validate_batch(read_batch(args.batch), load_params(args.params))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(asdict(result), indent=1, default=str))
    print(result.summary())
    if not result.success:
        sys.exit(1)


if __name__ == "__main__":
    main()
