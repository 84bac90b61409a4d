import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.plots import planned_plots, write_plots
from bench.records import write_record
from bench.report import render_leaderboard, render_outputs, write_leaderboard
from tests.bench.leaderboard_fixtures import leaderboard_records
from tests.bench.test_records import make_record

GOLDEN = Path(__file__).parent / "golden"


def fiq_metrics(value):
    per = {m: value for m in ("R@10", "R@50")}
    return {"dress": per, "shirt": per, "toptee": per, "average": {**per, "Avg": value}}


def table_rows(text, dataset):
    section = text.split(f"## {dataset} (val)")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[1:]]


def test_fashioniq_table_has_the_papers_columns_and_mean_std_over_seeds():
    records = [
        make_record(dataset="synth-fiq", layout="fashioniq", metrics=fiq_metrics(v), seed=s)
        for s, v in ((0, 10.0), (1, 20.0))
    ]
    (row,) = table_rows(render_leaderboard(records), "synth-fiq")
    for column in ("Dress R@10", "Dress R@50", "Shirt R@10", "Toptee R@50", "Average R@10", "Average R@50", "Avg"):
        assert row[column] == "15.00 ± 7.07"
    assert row["n"] == "2"


def test_missing_metrics_render_as_a_dash():
    (row,) = table_rows(render_leaderboard([make_record()]), "synth-cirr")
    assert row["R@10"] == "–" and row["Δ Avg [95% CI]"] == "–"


def test_cirr_table_layout_and_separate_rows_per_configuration():
    records = [make_record(), make_record(regularizer={"name": "wrf", "gamma": 0.001})]
    rows = table_rows(render_leaderboard(records), "synth-cirr")
    for column in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"):
        assert column in rows[0]
    assert [r["regularizer"] for r in rows] == ["none", "wrf(gamma=0.001)"]


def test_report_from_fixture_records_equals_the_golden_files():
    outputs = render_outputs(leaderboard_records())
    if os.environ.get("UPDATE_GOLDEN"):
        for name, text in outputs.items():
            (GOLDEN / name).write_text(text)
    for name, text in outputs.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from tests/bench/golden (UPDATE_GOLDEN=1)"


def test_leaderboard_rows_carry_delta_gap_overhead_and_the_sweeps_best_trial():
    text = render_leaderboard(leaderboard_records())
    rows = {(r["regularizer"], r["settings"]): r for r in table_rows(text, "synth-fiq")}
    wrf = rows[("wrf(gamma=0.001)", "epochs=2")]
    assert wrf["n"] == "2" and wrf["gap"] == "3.50" and wrf["overhead"] == "1.90x"
    delta, interval = wrf["Δ Avg [95% CI]"].split(" ", 1)
    low, high = (float(x) for x in interval.strip("[]").split(", "))
    assert 0 < low < float(delta) < high  # the planted improvement
    assert rows[("none", "epochs=2")]["Δ Avg [95% CI]"] == "–"
    # The sweep shows its baseline and its best complete trial (γ = 0.05), not γ = 1e-3 nor the partial trial.
    assert rows[("wrf(gamma=0.05)", "epochs=3")]["sweep"] == "best of 2 (demo-study)"
    assert ("wrf(gamma=0.001)", "epochs=3") not in rows and ("wrf(gamma=0.02)", "epochs=3") not in rows
    assert rows[("none", "epochs=3")]["n"] == "1"
    assert rows[("wrf(gamma=0.05)", "epochs=3")]["overhead"] == "1.90x"  # interleaved record of that config
    cirr = table_rows(text, "synth-cirr")
    assert [r["overhead"] for r in cirr if r["regularizer"].startswith("rwp")] == ["1.20x†"]


def test_overhead_records_are_not_recall_rows():
    overhead = make_record(metrics={}, kind="overhead", overhead={"ratio_median": 2.0})
    assert len(table_rows(render_leaderboard([make_record(), overhead]), "synth-cirr")) == 1


def test_rerun_of_a_configuration_and_seed_counts_once():
    first = make_record(run_id="a-run")
    second = make_record(run_id="b-run", metrics={"all": {"R@1": 20.0, "R@5": 30.0, "Rsubset@1": 50.0, "Avg": 40.0}})
    (row,) = table_rows(render_leaderboard([first, second]), "synth-cirr")
    assert row["n"] == "1" and row["R@1"] == "20.00"


def test_report_writes_all_files_and_check_detects_staleness(tmp_path, capsys):
    for record in leaderboard_records()[:5]:
        write_record(record, tmp_path)
    paths = write_leaderboard(tmp_path, plots=False)
    assert [p.name for p in paths] == ["LEADERBOARD.md", "leaderboard.csv", "leaderboard.tex"]
    assert main(["report", "--check", "--results-dir", str(tmp_path)]) == 0
    write_record(make_record(run_id="z-new"), tmp_path)
    assert main(["report", "--check", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "LEADERBOARD.md: stale" in err


def test_unknown_schema_version_is_one_line_and_nothing_is_written(tmp_path, capsys):
    write_record(make_record(), tmp_path)
    bad = make_record(run_id="zz-future")
    bad["schema_version"] = 99
    (tmp_path / "runs" / "zz-future.json").write_text(json.dumps(bad))
    assert main(["report", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "zz-future.json" in err and "schema_version 99" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.slow
def test_every_planned_plot_is_written_and_linked(tmp_path):
    records = leaderboard_records()
    planned = [name for name, _ in planned_plots(records)]
    assert {Path(n).stem.split("-")[0] for n in planned} == {"gap", "sensitivity", "overhead", "landscape", "sharpness"}
    paths = write_plots(records, tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in paths] == planned
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    text = render_leaderboard(records)
    assert all(f"]({name})" in text for name in planned)


def test_delta_pairs_the_same_seeds_when_the_baseline_has_them():
    from tests.bench.leaderboard_fixtures import trained_record

    fiq = dict(method="combiner", layout="fashioniq", dataset="synth-fiq", gap=1.0, step=0.02)
    wrf = {"name": "wrf", "gamma": 0.001}
    none0 = trained_record("a0", **fiq, seed=0, quality=0.4, regularizer={"name": "none"})
    none1 = trained_record("a1", **fiq, seed=1, quality=0.8, regularizer={"name": "none"})
    wrf0 = trained_record("b0", **fiq, seed=0, quality=0.4, regularizer=wrf)
    # Same seed, same hits: Δ is exactly 0 against seed 0, though the two-seed baseline mean is far higher.
    rows = table_rows(render_leaderboard([none0, none1, wrf0]), "synth-fiq")
    assert rows[1]["Δ Avg [95% CI]"] == "+0.00 [+0.00, +0.00]"
    wrf5 = trained_record("b5", **fiq, seed=5, quality=0.4, regularizer=wrf)
    rows = table_rows(render_leaderboard([none0, none1, wrf5]), "synth-fiq")
    assert rows[1]["Δ Avg [95% CI]"].startswith("-")  # no shared seed: against both baseline seeds
