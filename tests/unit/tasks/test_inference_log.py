"""Reading the inference log and joining labels: odd files and labels are reported, not fatal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deployments.serving.inference_log import InferenceLog, LogConfig, ModelStamp, Telemetry
from tasks.config import LabelSourceParams
from tasks.data import make_batch
from tasks.inference_log import join_labels, read_inference_log, read_labels

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def write_log(url, records, scores, at, version="3", batch=1, rid="r"):
    """Predictions as the serving app logs them, ``batch`` records per request."""
    sink_log = InferenceLog(LogConfig(url=str(url)), ModelStamp("m", version, ""), Telemetry())
    for i in range(0, len(records), batch):
        sink_log.record(f"{rid}{i}", records[i : i + batch], scores[i : i + batch], at=at)
    assert sink_log.flush() == len(records)


@pytest.fixture
def logged(tmp_path):
    batch = make_batch(1, 300)
    records = batch[["age", "contract", "customer_id"]].to_dict(orient="records")
    scores = np.linspace(0.01, 0.99, 300)
    write_log(tmp_path / "log", records[:200], scores[:200], T0.timestamp())
    write_log(tmp_path / "log", records[200:], scores[200:], (T0 - timedelta(days=3)).timestamp())
    return tmp_path / "log", batch, scores


def test_window_keeps_only_its_predictions_and_parses_the_records(logged):
    url, batch, scores = logged
    window = read_inference_log(str(url), T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert window.rows == 200 and window.notes == ()
    assert list(window.inputs["customer_id"]) == list(batch["customer_id"][:200])
    np.testing.assert_allclose(window.log["score"], scores[:200])
    assert set(window.log["decision"]) == {0, 1}


def test_truncated_and_old_schema_files_are_named_and_skipped(logged):
    url, _, _ = logged
    good = next(iter(url.glob("day=2026-11-20/*/*.parquet")))
    day = good.parent
    (day / "part-truncated.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    old = pa.table({"prediction_id": ["x"], "time": [T0], "score": [0.3]})
    pq.write_table(old, day / "part-old.parquet")
    window = read_inference_log(str(url), T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert window.rows == 200
    text = " ".join(window.notes)
    assert "part-truncated.parquet" in text and "truncated" in text
    assert "part-old.parquet" in text and "older schema" in text and "features" in text


def test_a_window_without_traffic_says_so(logged, tmp_path):
    url, _, _ = logged
    quiet = read_inference_log(str(url), T0 + timedelta(days=5), T0 + timedelta(days=6))
    assert quiet.rows == 0 and "no predictions logged" in " ".join(quiet.notes)
    nothing = read_inference_log(str(tmp_path / "nowhere"), None, None)
    assert nothing.rows == 0 and "no inference log files" in nothing.notes[0]


def test_labels_join_by_prediction_id_and_count_ids_never_predicted(logged, tmp_path):
    url, _, _ = logged
    window = read_inference_log(str(url), T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    labels = pd.DataFrame(
        {"pid": ["r0", "r1", "r2", "ghost-1", "ghost-2"], "y": [1, 0, 1, 0, 1], "t": [T0] * 5}
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    source = LabelSourceParams(
        url=str(tmp_path / "labels.parquet"), id_column="pid", label_column="y", time_column="t"
    )
    frame, notes = read_labels(source)
    assert notes == () and len(frame) == 5
    joined = join_labels(window, frame, "prediction_id")
    assert sorted(joined.frame["prediction_id"]) == ["r0", "r1", "r2"]
    assert list(joined.frame.sort_values("prediction_id")["y"]) == [1, 0, 1]
    assert joined.unmatched == 2 and "2 of 5 labels are for ids never predicted" in joined.notes[0]


def test_labels_join_by_a_declared_key_in_the_records(logged):
    url, batch, _ = logged
    window = read_inference_log(str(url), T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    ids = batch["customer_id"][:50].astype(str)
    labels = pd.DataFrame({"id": ids, "label": [1] * 25 + [0] * 25, "time": [T0] * 50})
    joined = join_labels(window, labels, "customer_id")
    assert len(joined.frame) == 50 and joined.unmatched == 0
    missing = join_labels(window, labels, "no_such_key")
    assert missing.frame.empty and "no_such_key" in missing.notes[0]


def test_missing_or_malformed_label_sources_are_reported(tmp_path):
    assert "no label source" in read_labels(LabelSourceParams())[1][0]
    assert "no label files" in read_labels(LabelSourceParams(url=str(tmp_path / "x")))[1][0]
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    frame, notes = read_labels(LabelSourceParams(url=str(tmp_path / "bad.parquet")))
    assert frame.empty and "lacks columns ['label', 'time']" in notes[0]


def test_records_are_parsed_in_one_arrow_pass_and_odd_ones_count_as_missing(monkeypatch):
    from tasks import inference_log

    records = ['{"age": 30, "contract": "monthly"}', '{"age": 41.5}', None]
    import types

    # the row-by-row fallback would need json.loads: without it, only the Arrow pass can work
    monkeypatch.setattr(inference_log, "json", types.SimpleNamespace(loads=None))
    frame, problem = inference_log.parse_records(records)
    assert frame["age"].tolist()[:2] == [30, 41.5] and pd.isna(frame["age"][2])
    assert problem is None and frame["contract"].tolist()[0] == "monthly"
    monkeypatch.undo()
    frame, problem = inference_log.parse_records(['{"age": 1}', "not json", "[1]"])
    assert frame["age"].tolist()[0] == 1 and "2 logged records are not JSON objects" in problem
