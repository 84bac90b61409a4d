from bench.records import write_record
from bench.report import render_leaderboard, write_leaderboard
from tests.bench.test_records import make_record


def fiq_metrics(value):
    per = {m: value for m in ("R@10", "R@50")}
    return {"dress": per, "shirt": per, "toptee": per, "average": {**per, "Avg": value}}


def test_fashioniq_table_has_the_papers_columns_and_mean_std_over_seeds():
    records = [
        make_record(dataset="synth-fiq", layout="fashioniq", metrics=fiq_metrics(v), seed=s)
        for s, v in ((0, 10.0), (1, 20.0))
    ]
    text = render_leaderboard(records)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    for column in ("Dress R@10", "Dress R@50", "Shirt R@10", "Toptee R@50", "Average R@10", "Average R@50", "Avg"):
        assert column in header
    assert "15.00 ± 7.07" in text
    row = next(line for line in text.splitlines() if line.startswith("| zero-shot-sum"))
    assert row.rstrip(" |").split("|")[-1].strip() == "2"


def test_missing_metrics_render_as_a_dash():
    text = render_leaderboard([make_record()])
    row = next(line for line in text.splitlines() if line.startswith("| zero-shot-sum"))
    assert "–" in row and "nan" not in row


def test_cirr_table_layout_and_separate_rows_per_configuration():
    records = [make_record(), make_record(regularizer={"name": "wrf", "gamma": 0.001})]
    text = render_leaderboard(records)
    assert "## synth-cirr (val)" in text
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    for column in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"):
        assert column in header
    assert "wrf(gamma=0.001)" in text
    assert text.count("zero-shot-sum") == 2


def test_write_leaderboard_renders_from_records_on_disk(tmp_path):
    write_record(make_record(), tmp_path)
    path = write_leaderboard(tmp_path)
    assert path == tmp_path / "LEADERBOARD.md"
    assert "10.00" in path.read_text()


def test_overhead_records_are_not_recall_rows():
    overhead = make_record(metrics={}, kind="overhead", overhead={"ratio_median": 2.0})
    text = render_leaderboard([make_record(), overhead])
    assert text.count("zero-shot-sum") == 1
