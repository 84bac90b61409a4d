"""Figures rendered from records (seaborn, PNG under ``results/plots/``): gap curves, γ sensitivity, step-time
overhead, loss landscapes and sharpness. Which figures exist is decided by the records alone, so the
leaderboard can link them without rendering them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _save(figure, path: Path) -> Path:
    """Write a figure atomically (PNG, no software/date metadata so re-renders of the same data are identical)."""
    import matplotlib.pyplot as plt

    atomic_write(
        path,
        lambda f: figure.savefig(f, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None}),
        mode="wb",
    )
    plt.close(figure)
    return path


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def _config_label(record: dict[str, Any]) -> str:
    from bench.report import regularizer_label

    return regularizer_label(record["regularizer"])


def gap_frame(records: list[dict[str, Any]]):
    """Long table of headline recall per epoch, curve (train subset / val), run and configuration."""
    import pandas as pd

    from bench.report import headline

    rows = []
    for record in records:
        for entry in record.get("history", []):
            for curve in ("train", "val"):
                if curve in entry:
                    rows.append(
                        {
                            "epoch": entry["epoch"],
                            "Avg": headline(record["layout"], entry[curve]),
                            "curve": curve,
                            "regularizer": _config_label(record),
                            "panel": f"{record['method']} / {record['regime']}",
                            "run": record["run_id"],
                        }
                    )
    return pd.DataFrame(rows)


def plot_gap_curves(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train-subset vs val headline recall per epoch, one panel per method and regime, one colour per regularizer."""
    plt, sns = _pyplot()
    frame = gap_frame(records)
    grid = sns.relplot(
        data=frame,
        x="epoch",
        y="Avg",
        hue="regularizer",
        hue_order=sorted(frame["regularizer"].unique(), key=lambda label: (label != "none", label)),
        style="curve",
        col="panel",
        col_wrap=min(3, frame["panel"].nunique()),
        kind="line",
        errorbar=("pi", 100),
        height=3,
        aspect=1.2,
        facet_kws={"sharey": False, "sharex": False},
    )
    grid.set_titles("{col_name}")
    grid.figure.suptitle(title, y=1.02)
    return _save(grid.figure, path)


def plot_sensitivity(
    points: list[dict[str, Any]], parameter: str, objective: str, baseline: float | None, path: Path, title: str
) -> Path:
    """Objective against a searched parameter (log axis), one marker per trial state, the baseline as a line."""
    import pandas as pd

    plt, sns = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    frame = pd.DataFrame(points)
    if not frame.empty:
        sns.scatterplot(data=frame, x=parameter, y="value", hue="state", style="state", s=50, ax=axis)
    if baseline is not None:
        axis.axhline(baseline, color="black", linestyle="--", linewidth=1, label="no regularizer")
        axis.legend()
    axis.set_xscale("log")
    axis.set_xlabel(parameter)
    axis.set_ylabel(objective)
    axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_overhead(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Median step-time ratio (bars) with the min-max range of the interleaved steps (error bars)."""
    import pandas as pd

    plt, sns = _pyplot()
    frame = pd.DataFrame(
        [
            {
                "config": f"{r['method']} / {r['regime']}",
                "regularizer": r["regularizer"]["name"],
                "ratio": r["overhead"]["ratio_median"],
                "low": r["overhead"]["ratio_min"],
                "high": r["overhead"]["ratio_max"],
            }
            for r in records
        ]
    ).sort_values(["config", "regularizer"])
    figure, axis = plt.subplots(figsize=(1.2 + 1.1 * len(frame), 3.4))
    sns.barplot(data=frame, x="config", y="ratio", hue="regularizer", ax=axis, errorbar=None)
    for patch, (_, row) in zip(axis.patches, frame.sort_values(["regularizer", "config"]).iterrows(), strict=False):
        centre = patch.get_x() + patch.get_width() / 2
        axis.errorbar(centre, row["ratio"], yerr=[[row["ratio"] - row["low"]], [row["high"] - row["ratio"]]], c="k")
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_ylabel("step time / unregularized")
    axis.set_xlabel("")
    axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_landscapes(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Per run: the 2-D surface (contours) above its 1-D slice, loss relative to the checkpoint's."""
    import numpy as np

    plt, _ = _pyplot()
    figure, axes = plt.subplots(2, len(records), figsize=(3.4 * len(records), 6.2), squeeze=False)
    for column, record in enumerate(records):
        landscape = record["landscape"]
        surface, line = landscape["surface"], landscape["line"]
        loss = np.asarray(surface["loss"]).T  # rows = betas for contour's (x=alpha, y=beta)
        contour = axes[0][column].contourf(surface["alphas"], surface["betas"], loss, levels=15, cmap="viridis")
        figure.colorbar(contour, ax=axes[0][column])
        label = f"{record['method']} / {record['regime']}\n{_config_label(record)}"
        axes[0][column].set_title(label, fontsize=8)
        axes[0][column].set_xlabel("α (direction 1)")
        axes[0][column].set_ylabel("β (direction 2)")
        axes[1][column].plot(line["alphas"], line["loss"], marker="o", markersize=3)
        axes[1][column].set_xlabel("α")
        axes[1][column].set_ylabel("training loss")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_sharpness(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss increase under the WRF ascent of relative size γ, per run (log γ)."""
    import pandas as pd

    plt, sns = _pyplot()
    frame = pd.DataFrame(
        [
            {"γ": gamma, "loss increase": value, "run": f"{r['method']} / {r['regime']} / {_config_label(r)}"}
            for r in records
            for gamma, value in zip(
                r["landscape"]["sharpness"]["gammas"], r["landscape"]["sharpness"]["loss_increase"], strict=True
            )
        ]
    )
    figure, axis = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(data=frame, x="γ", y="loss increase", hue="run", marker="o", ax=axis)
    axis.set_xscale("log")
    if (frame["loss increase"] > 0).all():
        axis.set_yscale("log")  # increases grow ~γ² over decades of γ: only a log axis shows the small ones
    axis.set_title(title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def study_points(records: list[dict[str, Any]], study: str) -> tuple[str, list[dict[str, Any]], float | None, str]:
    """(parameter, points, baseline value, objective) of a study's finished trials, from its records."""
    from bench.report import sweep_outcomes

    outcome = sweep_outcomes(records)[study]
    regularized = [t for t in outcome["trials"] if t["role"] == "trial"]
    parameter = sorted(regularized[0]["params"])[0] if regularized else "gamma"
    points = [{parameter: t["params"][parameter], "value": t["value"], "state": t["state"]} for t in regularized]
    baseline = outcome["baseline"]["value"] if outcome["baseline"] else None
    return parameter, points, baseline, outcome["objective"]


def planned_plots(records: list[dict[str, Any]]) -> list[tuple[str, Callable[[Path], Path]]]:
    """``(path relative to the results folder, render(path))`` for every figure the records support."""
    from bench.report import leaderboard_records, sweep_outcomes

    plans: list[tuple[str, Callable[[Path], Path]]] = []
    shown = leaderboard_records(records)
    by_dataset: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in shown:
        if any("train" in entry for entry in record.get("history", [])):
            by_dataset.setdefault((record["dataset"], record["split"]), []).append(record)
    for (dataset, split), group in sorted(by_dataset.items()):
        title = f"{dataset} ({split}): train subset vs val Avg per epoch"
        plans.append((f"plots/gap-{_slug(dataset)}-{split}.png", partial(plot_gap_curves, group, title=title)))
    for study, outcome in sweep_outcomes(records).items():
        if any(t["role"] == "trial" for t in outcome["trials"]):
            parameter, points, baseline, objective = study_points(records, study)
            render = partial(plot_sensitivity, points, parameter, objective, baseline, title=f"sweep {study}")
            plans.append((f"plots/sensitivity-{_slug(study)}.png", render))
    overheads: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("kind") == "overhead":
            overheads.setdefault(record["dataset"], []).append(record)
    for dataset, group in sorted(overheads.items()):
        title = f"{dataset}: step-time overhead (interleaved steps)"
        plans.append((f"plots/overhead-{_slug(dataset)}.png", partial(plot_overhead, group, title=title)))
    landscapes: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "landscape" in record:
            landscapes.setdefault(record["dataset"], []).append(record)
    for dataset, group in sorted(landscapes.items()):
        # Each method's runs side by side, unregularized first.
        group = sorted(group, key=lambda r: (r["method"], r["regime"], r["regularizer"]["name"] != "none", r["run_id"]))
        title = f"{dataset}: loss landscapes (filter-normalised directions)"
        plans.append((f"plots/landscape-{_slug(dataset)}.png", partial(plot_landscapes, group, title=title)))
        title = f"{dataset}: sharpness under the WRF ascent"
        plans.append((f"plots/sharpness-{_slug(dataset)}.png", partial(plot_sharpness, group, title=title)))
    return plans


def write_plots(records: list[dict[str, Any]], results_dir: Path | str) -> list[Path]:
    """Render every planned figure under ``results_dir``; returns the written paths."""
    return [render(Path(results_dir) / relative) for relative, render in planned_plots(records)]
