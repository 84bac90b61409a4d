import json

import pytest

from bench.errors import BenchError
from bench.records import SCHEMA_VERSION, load_records, new_record, write_record


def make_record(**overrides):
    fields = dict(
        method="zero-shot-sum",
        backbone={"family": "clip", "arch": "tiny", "pretrained": None},
        regime="zero-shot",
        regularizer={"name": "none"},
        seed=0,
        dataset="synth-cirr",
        layout="cirr",
        split="val",
        config={},
        metrics={"all": {"R@1": 10.0, "R@5": 30.0, "Rsubset@1": 50.0, "Avg": 40.0}},
    )
    fields.update(overrides)
    return new_record(**fields)


def test_record_has_provenance_and_round_trips(tmp_path):
    record = make_record()
    assert record["schema_version"] == SCHEMA_VERSION
    assert record["packages"]["torch"]
    assert "git_commit" in record
    path = write_record(record, tmp_path)
    assert path.parent == tmp_path / "runs"
    assert load_records(tmp_path) == [record]
    assert not list((tmp_path / "runs").glob(".*.tmp"))


def test_run_ids_are_unique():
    assert make_record()["run_id"] != make_record()["run_id"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("metrics"), "record has no 'metrics' field"),
        (lambda r: r.update(schema_version=99), "unknown schema_version 99"),
        (lambda r: r.update(seed="0"), "field 'seed' has the wrong type"),
        (lambda r: r["metrics"].update(all={"R@1": "high"}), r"metrics\['all'\] must map metric names to numbers"),
    ],
)
def test_bad_records_are_rejected_naming_the_file(tmp_path, mutate, message):
    record = make_record()
    mutate(record)
    path = tmp_path / "runs" / "bad.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(BenchError, match=message) as error:
        load_records(tmp_path)
    assert str(path) in str(error.value)


def test_malformed_json_record(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text("{")
    with pytest.raises(BenchError, match="x.json: malformed JSON at line 1"):
        load_records(tmp_path)


def test_invalid_record_is_never_written(tmp_path):
    record = make_record()
    del record["dataset"]
    with pytest.raises(BenchError):
        write_record(record, tmp_path)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_malformed_sweep_section_is_a_one_line_error():
    with pytest.raises(BenchError, match="sweep section needs study"):
        make_record(sweep={"study": "s", "trial": "first"})
