"""The README's benchmark section and bench/scaling.png, generated from bench/results.json.

    python -m bench.report [--results bench/results.json] [--readme README.md]

rewrites the part of the README between `<!-- bench:start -->` and `<!-- bench:end -->`, so
the published figures are always the last measurement and nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗ missed")


def render(r: dict[str, Any]) -> str:
    """Markdown tables of one benchmark result."""
    served, plain, warm = r["served"], r["plain_cold"], r.get("warm") or {}
    t, met = r["targets"], r["met"]
    n = r["runs"]
    lines = [
        f"Served runs on {r['rows']:,}-row versions, median of {n} "
        f"(flow runs started by `{served['runner']}`), against a plain cold script; "
        f"{r['machine']}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| plain cold script (start, imports, read, validate, fit, score both) | "
        f"{_s(plain['seconds'])} | |",
        f"| served full run: accepted webhook → Completed | {_s(served['full_seconds'])} | |",
        f"| served full / plain cold | {r['ratios']['full_over_plain']:.2f} | "
        f"≤ {t['full_over_plain']:.2f}{_mark(met['full_over_plain'])} |",
        f"| served unchanged-data run → Completed | {_s(served['unchanged_seconds'])} | |",
        f"| unchanged / full | {r['ratios']['unchanged_over_full']:.2f} | "
        f"≤ {t['unchanged_over_full']:.2f}{_mark(met['unchanged_over_full'])} |",
        f"| accepted webhook → Running (median of {len(served['accepted_to_running_all'])}) | "
        f"{_s(served['accepted_to_running'])} | ≤ {t['accepted_to_running']:.1f} s"
        f"{_mark(met['accepted_to_running'])} |",
        f"| accepted webhook → decision (gates done) | {_s(served['decision_seconds'])} | |",
        f"| data landed → rollout finished (stand-in) | {_s(served['landed_to_rollout_seconds'])}"
        f" | ≤ 2 × plain = {2 * plain['seconds']:.2f} s{_mark(met['landed_to_rollout'])} |",
    ]
    if warm:
        lines.append(
            f"| *warm, in one process (not what served runs pay):* full run / plain / rerun | "
            f"{_s(warm['flow_seconds'])} / {_s(warm['plain_seconds'])} / "
            f"{_s(warm['rerun_seconds'])} | |"
        )
    if warm.get("skip_imports"):
        skip = warm["skip_imports"]
        heavy = ", ".join(
            f"{name} ({skip['import_seconds'].get(name, 0):.2f} s)" for name in skip["imported"]
        )
        untouched = [n for n in ("great_expectations", "lightgbm") if n not in skip["imported"]]
        lines.append(
            f"| unchanged-data run as a fresh process imports | {heavy or 'none of the heavy'}"
            f" | not GX, not LightGBM{_mark(len(untouched) == 2)} |"
        )
    for key, label, target in (
        ("gates_seconds_1m", "all gates (1,000 paired resamples), 1M-row holdout", None),
        ("score_both_seconds_1m", "score both models once, 1M rows", None),
        ("drift_seconds_1m", "drift statistics, 1M rows × 20 features", "≤ 5 s"),
    ):
        if key in r:
            lines.append(f"| {label} | {_s(r[key])} | {target or ''} |")
    if "image_build_push_seconds" in r:
        lines.append(
            f"| model image build + push (loopback registry), share of a served full run | "
            f"{_s(r['image_build_push_seconds'])}, {r['image_share_of_flow']:.1%} | "
            f"≤ {t['image_share_of_flow']:.0%}{_mark(met.get('image_share_of_flow'))} |"
        )
    if "webhook_load" in r:
        w = r["webhook_load"]
        lines.append(
            f"| webhook under load ({w['requests']} signed requests, {w['in_flight']} in "
            f"flight): p50 / p95 | {_s(w['p50_seconds'])} / {_s(w['p95_seconds'])} | "
            f"p95 ≤ {t['webhook_p95_seconds']:.0f} s{_mark(met.get('webhook_p95'))} |"
        )
    if "serving_log_slowdown" in r:
        lines.append(
            f"| serving with the inference log, requests/s on / off (p95 ms on / off) | "
            f"{r['serving_rps_log_on']:.0f} / {r['serving_rps_log_off']:.0f} "
            f"({r['serving_p95_ms_log_on']:.1f} / {r['serving_p95_ms_log_off']:.1f}) | "
            f"≤ {t['serving_log_slowdown']:.0%} slower{_mark(met.get('serving_log_slowdown'))} |"
        )
    if "dask" in r:
        d = r["dask"]
        for name, label in (
            ("local", "local engine"),
            ("dask_1_workers", "Dask, 1 worker"),
            ("dask_2_workers", "Dask, 2 workers"),
        ):
            if name in d:
                e = d[name]
                peak = e.get("peak_rss_mb_per_worker")
                lines.append(
                    f"| {label}, {d['rows']:,} rows: train / score rows per s"
                    f"{' (peak MB per worker)' if peak else ''} | "
                    f"{e['train_rows_per_s']:,} / {e['score_rows_per_s']:,}"
                    f"{f' ({peak})' if peak else ''} | |"
                )
    for key, label in (("monitor_seconds", "production monitor, 1M logged predictions"),):
        if key in r:
            lines.append(f"| {label} | {_s(r[key])} | |")
    lines += [
        "",
        "Where a served full run's time goes (median seconds per stage; the plain script's "
        "stages for comparison):",
        "",
        "| stage | served | plain cold |",
        "|---|---|---|",
        "| accepted → Running (server event or poll, fork, engine start) | "
        f"{served['accepted_to_running']:.2f}"
        f" | {plain['stages'].get('imports', 0):.2f} (imports) |",
    ]
    plain_of = {"validate-data": "validate", "train-model": "fit", "evaluate-candidate": "score"}
    for name, seconds in served["tasks"].items():
        other = plain_of.get(name)
        label = f"task `{name}`"
        lines.append(
            f"| {label} | {seconds:.2f} | {plain['stages'][other]:.2f} ({other}) |"
            if other
            else f"| {label} | {seconds:.2f} | |"
        )
    lines.append(
        "| flow outside tasks (engine, and the wait for the gate plots drawn alongside) | "
        f"{served['outside_tasks']:.2f} | |"
    )
    lines.append(f"| read the batch | (in the tasks) | {plain['stages'].get('read', 0):.2f} |")
    if r.get("scaling"):
        lines += [
            "",
            "Memory and time of a served full run as the batch grows (peak resident memory of "
            "the flow-run process, against the batch's in-memory size):",
            "",
            "| rows | batch in memory | peak RSS | of which libraries | RSS / batch "
            "| run's own / batch | run time |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["scaling"]:
            libs = row.get("library_rss_bytes")
            own = row.get("own_rss_over_batch", row["rss_over_batch"])
            lines.append(
                f"| {row['rows']:,} | {row['batch_bytes'] / 2**20:.0f} MiB | "
                f"{row['peak_rss_bytes'] / 2**20:.0f} MiB | "
                f"{'—' if libs is None else f'{libs / 2**20:.0f} MiB'} | "
                f"{row['rss_over_batch']:.1f} | {own:.1f}"
                f"{_mark(own <= t['rss_over_batch'])} | {_s(row['seconds'])} |"
            )
        lines += [
            "",
            "Peak RSS counts the libraries a run has imported, shared with the fork server "
            "(paid once per machine, not per run); they dominate small batches. The target "
            f"(≤ {t['rss_over_batch']}× the batch) is judged on the run's own memory: its peak "
            "RSS less the fork server's.",
        ]
        lines += ["", "![memory and time against rows](bench/scaling.png)"]
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> bool:
    """Replace the marked section of ``readme`` with ``text``; False if the markers are absent."""
    content = readme.read_text()
    if START not in content or END not in content:
        return False
    head, rest = content.split(START, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
    return True


def plot_scaling(r: dict[str, Any], path: Path) -> None:
    """bench/scaling.png: peak RSS and batch size (MiB), and run time, against rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s["rows"] for s in r["scaling"]]
    fig, (mem, secs) = plt.subplots(1, 2, figsize=(9, 3.6))
    mem.plot(rows, [s["peak_rss_bytes"] / 2**20 for s in r["scaling"]], "o-", label="peak RSS")
    mem.plot(rows, [s["batch_bytes"] / 2**20 for s in r["scaling"]], "s--", label="batch")
    mem.plot(
        rows,
        [r["targets"]["rss_over_batch"] * s["batch_bytes"] / 2**20 for s in r["scaling"]],
        ":",
        color="grey",
        label="target: 3 × batch",
    )
    mem.set(xscale="log", yscale="log", xlabel="rows", ylabel="MiB", title="memory")
    mem.legend()
    secs.plot(rows, [s["seconds"] for s in r["scaling"]], "o-")
    secs.set(xscale="log", yscale="log", xlabel="rows", ylabel="seconds", title="served run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the README's benchmark section.")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if not update_readme(args.readme, render(results)):
        raise SystemExit(f"{args.readme} has no {START} ... {END} section")
    if results.get("scaling"):
        plot_scaling(results, args.results.parent / "scaling.png")


if __name__ == "__main__":
    main()
