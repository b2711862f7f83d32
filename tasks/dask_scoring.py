"""The Dask engine's holdout: split and kept on the workers, scored there by both models.

Both models (candidate and champion) are sent to every worker and score their partitions in
parallel; the gates get the scores, one per row, as with the local engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.config import Params
from tasks.dask_engine import DaskEngineError, dask_client, version_parts
from tasks.data import DataVersion, split_holdout

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from distributed import Client

    from tasks.metrics import TaskType

log = logging.getLogger(__name__)


def _holdout_part(df: pd.DataFrame, params: Params) -> pd.DataFrame:
    return split_holdout(df, params.data)[1]


def _score_part(df: pd.DataFrame, model: Any, task: TaskType, who: str) -> np.ndarray | None:
    from tasks.gates.evidence import score

    return None if df.empty else score(model, df, who, task)


@dataclass
class DaskHoldout:
    """The holdout rows of a partitioned version, kept on the workers and scored there.

    ``frame`` holds the same rows in the same order, gathered for what the gates read besides
    the scores (labels, slice columns, a batch for the latency gate)."""

    client: Client
    partitions: list[Any]  # dask.delayed, one per persisted holdout partition
    frame: pd.DataFrame
    task: TaskType

    def score(self, model: Any, who: str) -> np.ndarray:
        """``model``'s scores on every holdout row, computed partition by partition on the
        workers; a model that cannot score raises EvaluationError naming it, as locally."""
        import dask
        import numpy as np

        from tasks.reports import EvaluationError

        remote = self.client.scatter(model, broadcast=True, hash=False)
        scoring = [dask.delayed(_score_part)(p, remote, self.task, who) for p in self.partitions]
        try:
            pieces = self.client.gather(self.client.compute(scoring))
        except EvaluationError:
            raise
        except Exception as exc:
            raise DaskEngineError(
                f"scoring the {who} on the Dask cluster failed ({type(exc).__name__}: {exc})"
            ) from exc
        kept = [p for p in pieces if p is not None]
        return np.concatenate(kept) if kept else np.empty(0)


@contextlib.contextmanager
def holdout_on_dask(version: DataVersion, params: Params) -> Iterator[DaskHoldout]:
    """The version's holdout split, persisted on the cluster for scoring; see DaskHoldout."""
    import dask.dataframe as dd

    parts = version_parts(version)
    with dask_client(params) as client:
        ddf = dd.read_parquet([str(p) for p in parts])
        holdout = client.persist(ddf.map_partitions(_holdout_part, params))
        frame = client.compute(holdout).result().reset_index(drop=True)
        log.info("holdout of %d rows in %d partitions on Dask", len(frame), holdout.npartitions)
        yield DaskHoldout(client, list(holdout.to_delayed()), frame, params.train.task)
