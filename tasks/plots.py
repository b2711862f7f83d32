"""Plots of a gate report: every gate's status, the models' curves or residuals by task,
score distributions, slice metrics and the bootstrap of the gain."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tasks.reports import GateReport

COLORS = {"passed": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e"}


def write_plots(report: GateReport, folder: Path) -> list[Path]:
    """PNG files in ``folder``: curves.png (binary) or residuals.png (regression)
    or recall.png (multiclass), scores.png, slices.png and bootstrap.png when measured, and
    ``gate-<name>.png`` for every gate (built-in or custom) with a ``plot(evidence, ax)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = report.evidence
    if ev is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    models = [("candidate", ev.candidate_scores)]
    if ev.champion_scores is not None:
        models.append(("champion", ev.champion_scores))
    paths = []
    if report.task == "binary" and len(np.unique(ev.y)) >= 2:
        paths.append(_curves(ev.y, models, folder))
    elif report.task == "regression":
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, s in models:
            ax.scatter(ev.y, s - ev.y, s=4, alpha=0.4, label=name)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(title="Residuals on the holdout", xlabel="truth", ylabel="prediction - truth")
        ax.legend()
        paths.append(_save(fig, folder / "residuals.png"))
    elif report.task == "multiclass":
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (name, metrics) in enumerate(
            [("candidate", report.candidate_metrics), ("champion", report.champion_metrics or {})]
        ):
            recalls = {k: v for k, v in metrics.items() if k.startswith("recall[")}
            if recalls:
                ax.bar(
                    np.arange(len(recalls)) + 0.4 * i - 0.2, list(recalls.values()), 0.4, label=name
                )
                ax.set_xticks(np.arange(len(recalls)), list(recalls), rotation=30)
        ax.set(title="Recall per class", ylabel="recall")
        ax.legend()
        paths.append(_save(fig, folder / "recall.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in models:
        values = np.max(s, axis=1) if np.ndim(s) == 2 else s
        ax.hist(values, bins=50, alpha=0.5, label=name, density=True)
    xlabel = {"binary": "P(positive)", "multiclass": "P(decided class)"}.get(
        report.task, "prediction"
    )
    ax.set(title="Score distributions on the holdout", xlabel=xlabel)
    ax.legend()
    paths.append(_save(fig, folder / "scores.png"))

    slices = ev.slices.get("candidate", {})
    if slices:
        paths.append(_slices(report, slices, ev.slices.get("champion", {}), folder))
    if ev.bootstrap_gains is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(ev.bootstrap_gains[np.isfinite(ev.bootstrap_gains)], bins=60)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(
            title=f"Paired bootstrap of the {report.primary_metric} gain",
            xlabel="candidate - champion (positive: candidate better)",
        )
        paths.append(_save(fig, folder / "bootstrap.png"))
    for gate in ev.artifacts.get("plotting_gates", []):
        fig, ax = plt.subplots(figsize=(6, 4))
        gate.plot(ev, ax)
        ax.set_title(ax.get_title() or f"gate {gate.name}")
        paths.append(_save(fig, folder / f"gate-{gate.name}.png"))
    return paths


def write_gate_overview(report: GateReport, folder: Path) -> Path:
    """One row per gate result, built-in and custom alike, coloured by status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)

    rows = list(report.gates)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1))
    for i, g in enumerate(rows):
        ax.barh(i, 1, color=COLORS[g.status])
        label = f"{g.name} ({g.gate})" if g.gate and g.gate != g.name else g.name
        ax.text(
            0.02,
            i,
            f"{label}: {g.status} - {g.reason[:90]}",
            va="center",
            fontsize=7,
            color="white",
        )
    ax.set(yticks=[], xticks=[], title=f"Gates: {report.decision}")
    ax.invert_yaxis()
    return _save(
        fig, folder / "gates.png", {"left": 0.02, "right": 0.98, "bottom": 0.02, "top": 0.94}
    )


def _curves(y: np.ndarray, models: list[tuple[str, np.ndarray]], folder: Path) -> Path:
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, s in models:
        fpr, tpr, _ = skm.roc_curve(y, s)
        prec, rec, _ = skm.precision_recall_curve(y, s, drop_intermediate=True)
        roc.plot(*_thin(fpr, tpr), label=f"{name} (AUC {skm.roc_auc_score(y, s):.4f})")
        pr.plot(*_thin(rec, prec), label=f"{name} (AP {skm.average_precision_score(y, s):.4f})")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall", xlabel="recall", ylabel="precision")
    roc.legend(loc="lower right")
    pr.legend(loc="upper right")
    return _save(fig, folder / "curves.png")


def _thin(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` of a curve, evenly spaced along it, both ends kept: a 600-pixel
    line looks the same, and drawing 40,000 vertices costs most of a plot's time."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).astype(int))
    return x[keep], y[keep]


def _slices(
    report: GateReport, slices: dict[str, Any], champ: dict[str, Any], folder: Path
) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4), squeeze=False)
    for ax, (column, groups) in zip(axes[0], slices.items(), strict=True):
        names = list(groups)
        ax.bar(
            np.arange(len(names)) - 0.2,
            [groups[g][report.primary_metric] for g in names],
            0.4,
            label="candidate",
        )
        if champ.get(column):
            values = [champ[column][g][report.primary_metric] for g in names]
            ax.bar(np.arange(len(names)) + 0.2, values, 0.4, label="champion")
        ax.set_xticks(np.arange(len(names)), names, rotation=30)
        ax.set(title=column, ylabel=report.primary_metric)
    axes[0][0].legend()
    return _save(fig, folder / "slices.png")


MARGINS = {"left": 0.1, "right": 0.97, "bottom": 0.2, "top": 0.9, "wspace": 0.3}


def _save(fig: Any, path: Path, margins: dict[str, float] | None = None) -> Path:
    import matplotlib.pyplot as plt

    # fixed margins: tight_layout measures every tick label first, a quarter of the time
    fig.subplots_adjust(**(margins or MARGINS))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
