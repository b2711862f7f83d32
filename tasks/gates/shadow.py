"""Gate `shadow`: the candidate replays the last logged production requests offline.

Against what production answered for the same requests: the share of decisions that flip,
the score PSI, the candidate's p95 latency at the batch sizes production sent, and for
labelled requests a paired bootstrap of the primary metric (``tasks/shadow.py``). Judged only
when the inference log holds at least ``min_rows`` predictions; skipped, and said so,
otherwise. ``log_url`` and ``labels`` default to the production monitor's (``monitor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from tasks.config import LabelSourceParams
from tasks.gates.base import BaseGate, GateRule
from tasks.reports import GateResult

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class ShadowRule(GateRule):
    rows: int = Field(5_000, ge=1)  # the last N logged predictions of the serving version
    min_rows: int = Field(500, ge=1)  # fewer logged: the gate is skipped, and says so
    max_flip_rate: float | None = Field(0.1, ge=0, le=1)
    max_score_psi: float | None = Field(0.25, ge=0)
    max_p95_ms: float | None = Field(250.0, gt=0)  # at the batch sizes production sent
    latency_repeats: int = Field(10, ge=1)
    min_labelled_rows: int = Field(100, ge=1)  # for the paired metric comparison
    # rejected when the gain's upper bound is below -tolerance (absolute), or below
    # -relative_tolerance x the champion's value; neither: the task's default, else 0.002
    tolerance: float | None = Field(None, ge=0)
    relative_tolerance: float | None = Field(None, ge=0, le=1)
    resamples: int = Field(1000, ge=50, le=100_000)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0
    log_url: str | None = None  # null: monitor.log_url (the serving app's inference log)
    labels: LabelSourceParams | None = None  # null: monitor.labels
    # filled at load from registry.model_name: the shared log holds every model's records
    model_name: str | None = None


class ShadowGate(BaseGate):
    name = "shadow"
    Params = ShadowRule
    order = 75

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        from tasks.inference_log import join_labels, read_labels, read_recent
        from tasks.shadow import replay

        rule = self.params
        assert isinstance(rule, ShadowRule)
        if rule.log_url is None:
            return [self.result("skipped", "no inference log configured (monitor.log_url)")]
        name = rule.model_name
        window = read_recent(rule.log_url, rule.rows, None, evidence.threshold, name)
        if window.rows:
            serving = str(window.log["model_version"].iloc[-1])  # the version answering now
            if (window.log["model_version"].astype(str) != serving).any():
                window = read_recent(rule.log_url, rule.rows, serving, evidence.threshold, name)
        labelled = None
        if window.rows >= rule.min_rows and rule.labels is not None and rule.labels.url:
            labels, notes = read_labels(rule.labels)
            classes = getattr(evidence.candidate, "classes_", None)
            labelled = join_labels(window, labels, rule.labels.key, evidence.task, classes)
            evidence.notes.extend(f"shadow: {n}" for n in (*notes, *labelled.notes))
        report = replay(
            evidence.candidate,
            window,
            labelled,
            evidence.data.features,
            rule,
            evidence.primary_metric,
            evidence.threshold,
            rule.resamples,
            rule.alpha,
            rule.seed,
            evidence.task,
            evidence.champion,
        )
        evidence.artifacts["shadow"] = report
        return [
            self.result(c.status, c.reason, c.name, c.value, threshold=c.threshold, name=c.name)
            for c in report.checks
        ]
