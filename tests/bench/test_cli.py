"""The command line as a user meets it: real commands, one-line errors, non-zero exits, nothing half-written."""

import json
import shutil

import pytest

from bench.cli import main


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, *needles):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


def test_eval_zero_shot_baselines_write_records_and_report(capsys, small_world, tmp_path):
    status, out, _ = run_cli(
        capsys,
        "eval",
        "--dataset",
        "synth-cirr",
        "--data-root",
        str(small_world),
        "--pretrained",
        "none",
        "--results-dir",
        str(tmp_path),
    )
    assert status == 0
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert sorted(r["method"] for r in records) == ["zero-shot-image-only", "zero-shot-sum", "zero-shot-text-only"]
    for record in records:
        metrics = record["metrics"]["all"]
        assert set(metrics) == {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"}
        assert len(record["per_query"]["all"]["R@1"]) == 160
    assert run_cli(capsys, "report", "--results-dir", str(tmp_path))[0] == 0
    assert "zero-shot-sum" in (tmp_path / "LEADERBOARD.md").read_text()


def test_eval_on_test_splits_writes_server_files(capsys, small_world, tmp_path):
    status, _, _ = run_cli(
        capsys,
        "eval",
        "--dataset",
        "synth-cirr",
        "--data-root",
        str(small_world),
        "--split",
        "test1",
        "--baseline",
        "sum",
        "--pretrained",
        "none",
        "--out",
        str(tmp_path / "sub"),
        "--results-dir",
        str(tmp_path),
    )
    assert status == 0
    recall = json.loads((tmp_path / "sub" / "sum" / "recall_submission_test1.json").read_text())
    subset = json.loads((tmp_path / "sub" / "sum" / "recall_subset_submission_test1.json").read_text())
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert len(recall) == 2 + 80 and all(len(v) == 50 for k, v in recall.items() if k not in ("version", "metric"))
    assert all(len(v) == 3 for k, v in subset.items() if k not in ("version", "metric"))
    assert not (tmp_path / "runs").exists()


def test_data_check_prints_counts(capsys, small_world):
    status, out, _ = run_cli(
        capsys, "data", "check", "--dataset", "fashioniq", "--root", str(small_world / "fashioniq")
    )
    assert status == 0
    assert "dress" in out and "80" in out


@pytest.fixture
def broken_world(small_world, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(small_world, root)
    return root


def eval_cirr(capsys, root, results):
    return run_cli(
        capsys,
        "eval",
        "--dataset",
        "synth-cirr",
        "--data-root",
        str(root),
        "--pretrained",
        "none",
        "--results-dir",
        str(results),
    )


def test_malformed_json_is_one_line_and_writes_no_record(capsys, broken_world, tmp_path):
    (broken_world / "cirr" / "captions" / "cap.rc2.val.json").write_text("[{")
    status, _, err = eval_cirr(capsys, broken_world, tmp_path / "results")
    assert_one_line_error(status, err, "cap.rc2.val.json", "malformed JSON")
    assert not (tmp_path / "results").exists()


def test_record_missing_a_field(capsys, broken_world, tmp_path):
    path = broken_world / "cirr" / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    del records[3]["reference"]
    path.write_text(json.dumps(records))
    status, _, err = eval_cirr(capsys, broken_world, tmp_path / "results")
    assert_one_line_error(status, err, "cap.rc2.val.json", "record 3", "reference")
    assert not (tmp_path / "results").exists()


def test_duplicate_pairid(capsys, broken_world, tmp_path):
    path = broken_world / "cirr" / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    records[5]["pairid"] = records[4]["pairid"]
    path.write_text(json.dumps(records))
    status, _, err = eval_cirr(capsys, broken_world, tmp_path / "results")
    assert_one_line_error(status, err, "cap.rc2.val.json", str(records[4]["pairid"]))
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_bad_image_is_named_and_writes_no_record(capsys, broken_world, tmp_path, damage):
    split = json.loads((broken_world / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    name, relative = next(iter(split.items()))
    image = broken_world / "cirr" / "img_raw" / relative
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(b"not a png")
    status, _, err = eval_cirr(capsys, broken_world, tmp_path / "results")
    assert_one_line_error(status, err, image.name)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["eval", "--dataset", "cirrr"], ["--dataset", "did you mean cirr"]),
        (["eval", "--dataset", "synth-cirr", "--split", "test"], ["--split", "test1"]),
        (["eval", "--dataset", "fashioniq"], ["--data-root"]),
        (["eval", "--baseline", "image-and-text"], ["--baseline"]),
        (["eval", "--backbone", "RN50x5"], ["--backbone", "RN50x4"]),
        (["data", "check", "--dataset", "cirr", "--root", "/nonexistent"], ["--root"]),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, tmp_path, small_world, argv, needles):
    argv = argv + ["--results-dir", str(tmp_path), "--pretrained", "none"] if argv[0] == "eval" else argv
    if argv[0] == "eval" and "--dataset" in argv and argv[argv.index("--dataset") + 1].startswith("synth"):
        argv += ["--data-root", str(small_world)]
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_unknown_category_in_a_real_layout(capsys, real_annotations, tmp_path):
    from bench.data.fashioniq import load_fashioniq
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="skirt"):
        load_fashioniq(real_annotations / "fashioniq", "val", "skirt")


def test_list_names_every_registered_method_dataset_and_study(capsys):
    from bench.data import DATASETS
    from methods import list_methods

    status, out, _ = run_cli(capsys, "list")
    assert status == 0
    for name in [*list_methods(), *DATASETS]:
        assert f"  {name} " in out
    assert "sweeps/combiner-wrf.yaml" in out
