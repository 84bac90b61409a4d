"""The leaderboard: every record under ``results/runs/`` rendered into Markdown, CSV and LaTeX, plus the plots.

One table per dataset in the papers' column layout; one row per (method, backbone, fine-tuning regime,
regularizer), mean ± std over seeds; Δ against the same configuration without regularizer with a paired
bootstrap 95% interval over queries; the generalization gap at the selected epoch; the step-time overhead.
A sweep contributes its baseline and its best trial; all its trials appear in its γ-sensitivity plot.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import write_text
from bench.records import DEFAULT_RESULTS_DIR, load_records

FASHIONIQ_COLUMNS = [
    (subset, metric) for subset in ("dress", "shirt", "toptee", "average") for metric in ("R@10", "R@50")
] + [("average", "Avg")]
CIRR_COLUMNS = [("all", m) for m in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg")]
ROW_KEYS = ("method", "backbone", "regime", "regularizer", "settings")
# Config fields that do not define a configuration (or are shown in other columns).
NON_DEFINING = {"seed", "reg", "reg_settings", "checkpoint_root", "device", "data_root", "eval_batch_size"}
NON_DEFINING |= {"feature_cache", "method", "dataset", "backbone", "pretrained", "lora"}
STRENGTHS = ("gamma", "rho")  # always shown in a regularizer's label, even at their default
OUTPUTS = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.tex")


def backbone_label(backbone: dict[str, Any]) -> str:
    """``arch`` plus its weights, e.g. ``RN50x4/openai`` or ``cirbench-tiny-clip/random-init``."""
    return f"{backbone.get('arch', '?')}/{backbone.get('pretrained') or 'random-init'}"


def regularizer_label(regularizer: dict[str, Any]) -> str:
    """The regularizer's name, its strength and the settings that differ from their defaults: ``wrf(gamma=0.001)``."""
    from bench.regularize import list_regularizers, settings_class

    name = regularizer.get("name", "none")
    defaults = {}
    if name in list_regularizers():
        import dataclasses

        defaults = {f.name: f.default for f in dataclasses.fields(settings_class(name))}
    shown = {
        k: v for k, v in sorted(regularizer.items()) if k != "name" and (k in STRENGTHS or defaults.get(k, ...) != v)
    }
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return f"{name}({settings})" if settings else name


def headline(layout: str, metrics: dict[str, dict[str, float]]) -> float:
    """The published headline: FashionIQ average Avg, CIRR Avg."""
    return metrics["average" if layout == "fashioniq" else "all"]["Avg"]


def _column_name(subset: str, metric: str) -> str:
    if subset in ("all", "average") and metric == "Avg":
        return "Avg"
    return metric if subset == "all" else f"{subset.capitalize()} {metric}"


def _defining_config(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record["config"].items() if k not in NON_DEFINING}


def _config_key(record: dict[str, Any]) -> str:
    return json.dumps(_defining_config(record), sort_keys=True)


def sweep_outcomes(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per study: its baseline trial, its best complete trial (mean objective over all its seeds) and every
    finished trial (complete, or pruned with the value of its best epoch before it stopped).

    Computed from the records alone; a trial is complete once it has an unstopped record for every seed.
    """
    from sweeps.study import objective_metric

    trials: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for record in records:
        if "sweep" in record:
            trials.setdefault(record["sweep"]["study"], {}).setdefault(record["sweep"]["trial"], []).append(record)
    outcomes = {}
    for study, by_trial in sorted(trials.items()):
        finished = []
        for number, group in sorted(by_trial.items()):
            info = group[0]["sweep"]
            pruned = any("stopped" in r for r in group)
            if not pruned and {r["seed"] for r in group} != set(info["seeds"]):
                continue  # still running, or its worker died: not a result yet
            subset, metric = objective_metric(info["objective"], group[0]["layout"], source=group[0]["run_id"])
            value = statistics.fmean(r["metrics"][subset][metric] for r in group)
            state = "pruned" if pruned else "complete"
            finished.append(
                {"trial": number, "role": info["role"], "params": info["params"], "value": value, "state": state}
            )
        regularized = [t for t in finished if t["role"] == "trial" and t["state"] == "complete"]
        outcomes[study] = {
            "trials": finished,
            "best": max(regularized, key=lambda t: t["value"], default=None),
            "baseline": next((t for t in finished if t["role"] == "baseline" and t["state"] == "complete"), None),
            "objective": by_trial[min(by_trial)][0]["sweep"]["objective"],
        }
    return outcomes


def leaderboard_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the tables show: recall records, of each sweep only its baseline and best trial, and of
    re-runs of one configuration and seed only the latest."""
    outcomes = sweep_outcomes(records)
    shown = {
        (study, outcome[role]["trial"])
        for study, outcome in outcomes.items()
        for role in ("best", "baseline")
        if outcome[role] is not None
    }
    latest: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["run_id"]):
        if record.get("kind") == "overhead":
            continue
        if "sweep" in record and (record["sweep"]["study"], record["sweep"]["trial"]) not in shown:
            continue
        key = (*_row_identity(record), record["seed"])
        latest[key] = record
    return sorted(latest.values(), key=lambda r: r["run_id"])


def _row_identity(record: dict[str, Any]) -> tuple:
    return (
        record["layout"],
        record["dataset"],
        record["split"],
        record["method"],
        backbone_label(record["backbone"]),
        record["regime"],
        regularizer_label(record["regularizer"]),
        _config_key(record),
    )


def _settings_labels(records: list[dict[str, Any]]) -> dict[tuple, str]:
    """Per (dataset, method, backbone, regime, config key): the defining settings that differ between records of the same method/backbone/regime."""
    families: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        families.setdefault(_row_identity(record)[:6], []).append(record)
    labels = {}
    for family in families.values():
        configs = [_defining_config(r) for r in family]
        varying = sorted({k for c in configs for k in c if any(c.get(k) != o.get(k) for o in configs)})
        for record, config in zip(family, configs, strict=True):
            labels[(*_row_identity(record)[:6], _config_key(record))] = ", ".join(
                f"{k}={config.get(k)}" for k in varying
            )
    return labels


def _gap(record: dict[str, Any]) -> float | None:
    """Train-subset minus val headline recall at the selected epoch (None without a train-gap evaluation)."""
    epoch = record.get("selected_epoch")
    history = {entry["epoch"]: entry for entry in record.get("history", [])}
    entry = history.get(epoch)
    if entry is None or "train" not in entry:
        return None
    return headline(record["layout"], entry["train"]) - headline(record["layout"], entry["val"])


def _overhead_ratios(records: list[dict[str, Any]]) -> dict[tuple, float]:
    """Median step-time ratio of each overhead record, by (dataset, method, backbone, regime, regularizer name)."""
    ratios = {}
    for record in sorted(records, key=lambda r: r["run_id"]):
        if record.get("kind") == "overhead":
            key = (record["dataset"], record["method"], backbone_label(record["backbone"]), record["regime"])
            ratios[(*key, record["regularizer"]["name"])] = record["overhead"]["ratio_median"]
    return ratios


def _median_step(records: list[dict[str, Any]]) -> float | None:
    steps = [r["timing"]["step_seconds"]["step"] for r in records if r.get("timing", {}).get("step_seconds")]
    return statistics.median(steps) if steps else None


def leaderboard_rows(all_records: list[dict[str, Any]], bootstrap_resamples: int = 2000) -> dict[tuple, list[dict]]:
    """Table rows per (layout, dataset, split): labels, per-column mean/std, n, Δ interval, gap and overhead."""
    from bench.stats import headline_scores, paired_bootstrap

    records = leaderboard_records(all_records)
    settings = _settings_labels(records)
    overheads = _overhead_ratios(all_records)
    outcomes = sweep_outcomes(all_records)
    best_trials = {(s, o["best"]["trial"]): s for s, o in outcomes.items() if o["best"] is not None}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(_row_identity(record), []).append(record)
    tables: dict[tuple, list[dict]] = {}
    for identity, group in sorted(groups.items()):
        layout, dataset, split, method, backbone, regime, regularizer, config_key = identity
        columns = FASHIONIQ_COLUMNS if layout == "fashioniq" else CIRR_COLUMNS
        row: dict[str, Any] = {
            "method": method,
            "backbone": backbone,
            "regime": regime,
            "regularizer": regularizer,
            "settings": settings[(*identity[:6], config_key)],
            "n": len(group),
            "seeds": sorted(r["seed"] for r in group),
        }
        for subset, metric in columns:
            values = [r["metrics"].get(subset, {}).get(metric) for r in group]
            values = [v for v in values if v is not None]
            row[_column_name(subset, metric)] = (
                statistics.fmean(values) if values else None,
                statistics.stdev(values) if len(values) > 1 else None,
            )
        gaps = [g for g in map(_gap, group) if g is not None]
        row["gap"] = statistics.fmean(gaps) if gaps else None
        row["delta"] = row["overhead"] = None
        row["overhead_source"] = None
        row["sweep"] = next(
            (
                f"best of {sum(t['role'] == 'trial' and t['state'] == 'complete' for t in outcomes[s]['trials'])} ({s})"
                for r in group
                if "sweep" in r and (s := best_trials.get((r["sweep"]["study"], r["sweep"]["trial"])))
            ),
            "",
        )
        name = group[0]["regularizer"].get("name", "none")
        baseline = groups.get((*identity[:6], "none", config_key))
        if name != "none" and baseline is not None:
            # Same seeds on both sides when the baseline has them (same init and data order): a tighter pairing.
            seeds = {r["seed"] for r in group}
            control = [r for r in baseline if r["seed"] in seeds] or baseline
            try:
                row["delta"] = paired_bootstrap(
                    headline_scores(layout, group), headline_scores(layout, control), bootstrap_resamples
                )
            except BenchError:
                row["delta"] = None  # records without per-query hits (older or hand-made): no interval
            ratio = overheads.get((dataset, method, backbone, regime, name))
            if ratio is not None:
                row["overhead"], row["overhead_source"] = ratio, "interleaved"
            elif (mine := _median_step(group)) and (theirs := _median_step(baseline)):
                row["overhead"], row["overhead_source"] = mine / theirs, "runs"
        tables.setdefault((layout, dataset, split), []).append(row)
    return tables


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _delta_cell(interval) -> str:
    if interval is None:
        return "–"
    return f"{interval.delta:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]"


def _overhead_cell(row: dict[str, Any]) -> str:
    if row["overhead"] is None:
        return "–"
    return f"{row['overhead']:.2f}x" + ("" if row["overhead_source"] == "interleaved" else "†")


def _display_columns(layout: str, rows: list[dict]) -> list[str]:
    columns = FASHIONIQ_COLUMNS if layout == "fashioniq" else CIRR_COLUMNS
    labels = ["method", "backbone", "regime", "regularizer"] + (
        ["settings"] if any(r["settings"] for r in rows) else []
    )
    tail = ["Δ Avg [95% CI]", "gap", "overhead", "n"] + (["sweep"] if any(r["sweep"] for r in rows) else [])
    return labels + [_column_name(s, m) for s, m in columns] + tail


def _display_row(layout: str, row: dict[str, Any]) -> dict[str, str]:
    cells = {key: str(row[key]) for key in ("method", "backbone", "regime", "regularizer", "settings", "n", "sweep")}
    for subset, metric in FASHIONIQ_COLUMNS if layout == "fashioniq" else CIRR_COLUMNS:
        cells[_column_name(subset, metric)] = _cell(*row[_column_name(subset, metric)])
    cells["Δ Avg [95% CI]"] = _delta_cell(row["delta"])
    cells["gap"] = "–" if row["gap"] is None else f"{row['gap']:.2f}"
    cells["overhead"] = _overhead_cell(row)
    return cells


def plot_files(records: list[dict[str, Any]]) -> list[str]:
    """The plots the records support, as paths relative to the results folder (same names ``write_plots`` uses)."""
    from bench.plots import planned_plots

    return [name for name, _ in planned_plots(records)]


def _markdown_table(header: list[str], rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row[c] for c in header) + " |" for row in rows]
    return "\n".join(lines)


def render_leaderboard(records: list[dict[str, Any]], bootstrap_resamples: int = 2000) -> str:
    """The leaderboard markdown for ``records``."""
    return _markdown(leaderboard_rows(records, bootstrap_resamples), plot_files(records), bootstrap_resamples)


def _markdown(tables: dict[tuple, list[dict]], plots: list[str], bootstrap_resamples: int) -> str:
    lines = [
        "# Leaderboard",
        "",
        "Rendered by `python -m bench report` from the records in `results/runs/`; do not edit by hand",
        "(CI fails when this file is stale). Also as `leaderboard.csv` and `leaderboard.tex`.",
        "",
        "Recall in %, mean ± std over seeds (n = number of seeds). FashionIQ: Avg = (mean R@10 + mean R@50) / 2;",
        "CIRR: Avg = (R@5 + Rsubset@1) / 2. **Δ Avg**: against the same configuration without regularizer (its runs",
        "of the same seeds when it has them), paired bootstrap over queries of the seed-averaged hits",
        f"({bootstrap_resamples} resamples, 95% percentile interval). **gap**: train-subset",
        "Avg − val Avg at the selected epoch (a train subset ranked against a gallery of val's size).",
        "**overhead**: step time / unregularized step time, median of interleaved steps in one process",
        "(`python -m bench overhead`); † = from the runs' median step times instead (separate processes).",
        "**sweep**: the row is the best of the completed trials of an Optuna study (baseline: the matching `none` row).",
    ]
    if not tables:
        lines += ["", "No records yet."]
    for (layout, dataset, split), rows in sorted(tables.items()):
        header = _display_columns(layout, rows)
        cells = [_display_row(layout, row) for row in rows]
        lines += ["", f"## {dataset} ({split})", "", _markdown_table(header, cells)]
    if plots:
        lines += ["", "## Plots", ""] + [f"- [{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def render_csv(tables: dict[tuple, list[dict]]) -> str:
    """One numeric row per configuration of ``leaderboard_rows``: labels, ``<column>`` and ``<column> std``, Δ
    with its interval, gap, overhead and n (machine-readable twin of the Markdown)."""
    import csv
    import io

    out = io.StringIO()
    writer = None
    for (layout, dataset, split), rows in sorted(tables.items()):
        for row in rows:
            flat: dict[str, Any] = {"dataset": dataset, "split": split, "layout": layout}
            flat.update({k: row[k] for k in ("method", "backbone", "regime", "regularizer", "settings")})
            for subset, metric in FASHIONIQ_COLUMNS + CIRR_COLUMNS:
                name = f"{subset}/{metric}"
                mean, std = row.get(_column_name(subset, metric), (None, None)) if _in(layout, subset) else (None, None)
                flat[name], flat[f"{name} std"] = _number(mean), _number(std)
            interval = row["delta"]
            flat.update(
                delta=_number(interval and interval.delta),
                delta_low=_number(interval and interval.low),
                delta_high=_number(interval and interval.high),
                gap=_number(row["gap"]),
                overhead=_number(row["overhead"]),
                overhead_source=row["overhead_source"] or "",
                n=row["n"],
                seeds=" ".join(map(str, row["seeds"])),
                sweep=row["sweep"],
            )
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(flat), lineterminator="\n")
                writer.writeheader()
            writer.writerow(flat)
    return out.getvalue()


def _in(layout: str, subset: str) -> bool:
    return subset in ({"dress", "shirt", "toptee", "average"} if layout == "fashioniq" else {"all"})


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$"}
    replacements |= {"{": r"\{", "}": r"\}", "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "†": r"$^\dagger$"}
    return "".join(replacements.get(ch, ch) for ch in text)


def render_latex(tables: dict[tuple, list[dict]]) -> str:
    """One booktabs ``tabular`` per table of ``leaderboard_rows`` (needs ``\\usepackage{booktabs}``), same cells
    as the Markdown."""
    blocks = ["% Rendered by `python -m bench report` from results/runs; do not edit by hand."]
    for (layout, dataset, split), rows in sorted(tables.items()):
        header = [c for c in _display_columns(layout, rows) if c not in ("backbone", "sweep")]
        labels = sum(c in ("method", "regime", "regularizer", "settings") for c in header)
        cells = [_display_row(layout, row) for row in rows]
        body = [" & ".join(_latex_escape(c) for c in header) + r" \\", r"\midrule"]
        body += [" & ".join(_latex_escape(row[c]) for c in header) + r" \\" for row in cells]
        blocks += [
            "",
            f"% {dataset} ({split})",
            r"\begin{tabular}{" + "l" * labels + "r" * (len(header) - labels) + "}",
            r"\toprule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
        ]
    return "\n".join(blocks) + "\n"


def render_outputs(records: list[dict[str, Any]], bootstrap_resamples: int = 2000) -> dict[str, str]:
    """The three leaderboard files' contents by file name (rows computed once)."""
    tables = leaderboard_rows(records, bootstrap_resamples)
    return {
        "LEADERBOARD.md": _markdown(tables, plot_files(records), bootstrap_resamples),
        "leaderboard.csv": render_csv(tables),
        "leaderboard.tex": render_latex(tables),
    }


def write_leaderboard(results_dir: Path | str = DEFAULT_RESULTS_DIR, plots: bool = True) -> list[Path]:
    """Render every record under ``results_dir`` into the leaderboard files and the plots; returns the paths.

    Everything is rendered before anything is written, so a bad record leaves the old files untouched.
    """
    records = load_records(results_dir)
    outputs = render_outputs(records)
    written = [write_text(Path(results_dir) / name, text) for name, text in outputs.items()]
    if plots:
        from bench.plots import write_plots

        written += write_plots(records, results_dir)
    return written


def stale_outputs(results_dir: Path | str = DEFAULT_RESULTS_DIR) -> list[str]:
    """The leaderboard files that differ from what the records render to (empty when all are up to date)."""
    records = load_records(results_dir)
    stale = []
    for name, text in render_outputs(records).items():
        path = Path(results_dir) / name
        if not path.is_file() or path.read_text() != text:
            stale.append(str(path))
    return stale
