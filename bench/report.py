"""The leaderboard: every record under ``results/runs/`` rendered into ``results/LEADERBOARD.md`` with pandas.

One table per dataset in the papers' column layout; one row per (method, backbone, fine-tuning regime,
regularizer), mean ± std over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.io import write_text
from bench.records import DEFAULT_RESULTS_DIR, load_records

FASHIONIQ_COLUMNS = [
    (subset, metric) for subset in ("dress", "shirt", "toptee", "average") for metric in ("R@10", "R@50")
] + [("average", "Avg")]
CIRR_COLUMNS = [("all", m) for m in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg")]
ROW_KEYS = ("method", "backbone", "regime", "regularizer")


def backbone_label(backbone: dict[str, Any]) -> str:
    """``arch`` plus its weights, e.g. ``RN50x4/openai`` or ``cirbench-tiny-clip/random-init``."""
    return f"{backbone.get('arch', '?')}/{backbone.get('pretrained') or 'random-init'}"


def regularizer_label(regularizer: dict[str, Any]) -> str:
    """The regularizer's name and settings, e.g. ``wrf(gamma=0.001)`` or ``none``."""
    settings = ", ".join(f"{k}={v}" for k, v in sorted(regularizer.items()) if k != "name")
    return f"{regularizer.get('name', 'none')}({settings})" if settings else regularizer.get("name", "none")


def _column_name(subset: str, metric: str) -> str:
    if subset in ("all", "average") and metric == "Avg":
        return "Avg"
    return metric if subset == "all" else f"{subset.capitalize()} {metric}"


def leaderboard_table(records: list[dict[str, Any]], columns: list[tuple[str, str]]):
    """A DataFrame with one row per configuration and ``mean ± std`` cells over its seeds (``n`` = seed count)."""
    import pandas as pd

    rows = []
    for record in records:
        row = {
            "method": record["method"],
            "backbone": backbone_label(record["backbone"]),
            "regime": record["regime"],
            "regularizer": regularizer_label(record["regularizer"]),
            "seed": record["seed"],
        }
        for subset, metric in columns:
            row[_column_name(subset, metric)] = record["metrics"].get(subset, {}).get(metric)
        rows.append(row)
    frame = pd.DataFrame(rows)
    value_columns = [_column_name(s, m) for s, m in columns]
    grouped = frame.groupby(list(ROW_KEYS), sort=True)
    means, stds = grouped[value_columns].mean(), grouped[value_columns].std(ddof=1)
    single = grouped.size() == 1
    cells = means.copy().astype(object)
    for column in value_columns:
        cells[column] = [
            "–" if pd.isna(m) else f"{m:.2f}" if one or pd.isna(s) else f"{m:.2f} ± {s:.2f}"
            for m, s, one in zip(means[column], stds[column], single, strict=True)
        ]
    cells["n"] = grouped.size()
    return cells.reset_index()


def render_leaderboard(records: list[dict[str, Any]]) -> str:
    """The leaderboard markdown for ``records`` (validation-split records only: test splits have no targets)."""
    lines = [
        "# Leaderboard",
        "",
        "Rendered by `python -m bench report` from the records in `results/runs/`; do not edit by hand.",
        "Recall in %, mean ± std over seeds (n = number of seeds). FashionIQ: Avg = (mean R@10 + mean R@50) / 2;",
        "CIRR: Avg = (R@5 + Rsubset@1) / 2.",
    ]
    by_dataset: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("kind") == "overhead":
            continue  # step-time measurements, not recall
        by_dataset.setdefault((record["layout"], record["dataset"], record["split"]), []).append(record)
    if not by_dataset:
        lines += ["", "No records yet."]
    for (layout, dataset, split), group in sorted(by_dataset.items()):
        columns = FASHIONIQ_COLUMNS if layout == "fashioniq" else CIRR_COLUMNS
        table = leaderboard_table(group, columns)
        lines += ["", f"## {dataset} ({split})", "", table.to_markdown(index=False, disable_numparse=True)]
    return "\n".join(lines) + "\n"


def write_leaderboard(results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """Render every record under ``results_dir`` into ``results_dir/LEADERBOARD.md`` (atomically)."""
    records = load_records(results_dir)
    return write_text(Path(results_dir) / "LEADERBOARD.md", render_leaderboard(records))
