"""Sweeps end to end on the small synthetic world: trials, baseline, records, workers, a killed worker, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.records import load_records
from sweeps.study import load_stored_study

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_sweep(folder: Path, world: Path, name: str = "tiny", **overrides) -> Path:
    values = dict(
        method="combiner",
        dataset="synth-fiq",
        data_root=str(world),
        pretrained="none",
        epochs=2,
        trials=3,
        pruner="none",
        heartbeat_seconds=1,
        grace_seconds=2,
    )
    values.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def worker(sweep: Path, results: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "bench", "sweep", str(sweep), "--results-dir", str(results), *flags]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_three_trial_sweep_end_to_end(small_world, tmp_path, capsys):
    sweep = write_sweep(tmp_path, small_world, seeds=[0, 1])
    assert main(["sweep", str(sweep), "--results-dir", str(tmp_path)]) == 0
    study = load_stored_study("tiny", tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert states(study) == ["COMPLETE"] * 4
    assert trials[0].user_attrs["role"] == "baseline" and trials[0].params == {}
    assert trials[1].params == {"gamma": 1e-3}  # the paper's value runs first
    assert all(1e-5 <= t.params["gamma"] <= 1e-1 for t in trials[1:])
    records = {r["run_id"]: r for r in load_records(tmp_path)}
    for trial in trials:
        runs = [records[run_id] for run_id in trial.user_attrs["run_ids"]]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(r["sweep"]["trial"] == trial.number and r["sweep"]["study"] == "tiny" for r in runs)
        assert {r["regularizer"]["name"] for r in runs} == {"none" if trial.number == 0 else "wrf"}
        assert trial.value == pytest.approx(sum(r["metrics"]["average"]["Avg"] for r in runs) / 2)
        # Seed 1's epochs are reported after seed 0's: steps 1..4 for two seeds of two epochs.
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "best of 3 (tiny)" in board and "| none |" in board
    best_row = next(line for line in board.splitlines() if "best of 3" in line)
    assert best_row.split("|")[-3].strip() == "2"  # n = both seeds
    assert (tmp_path / "plots" / "sensitivity-tiny.png").is_file()

    # Running it again finds the budget met; a larger --n-trials tops it up by exactly the difference.
    assert main(["sweep", str(sweep), "--results-dir", str(tmp_path)]) == 0
    assert len(states(study)) == 4
    assert main(["sweep", str(sweep), "--results-dir", str(tmp_path), "--n-trials", "4"]) == 0
    assert states(study) == ["COMPLETE"] * 5

    capsys.readouterr()
    assert main(["sweep-report", "tiny", "--results-dir", str(tmp_path)]) == 0
    lines = (tmp_path / "sweeps" / "tiny.csv").read_text().splitlines()
    assert lines[0].startswith("number,state,role,value,gamma") and len(lines) == 6
    assert (tmp_path / "plots" / "sweep-tiny.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-workers")  # several worker processes each: never alongside the other such test
def test_three_workers_on_one_storage_complete_distinct_trials(small_world, tmp_path):
    sweep = write_sweep(tmp_path, small_world, trials=4)
    # Two sweep commands, one of them with two local worker processes: three workers on one storage.
    workers = [worker(sweep, tmp_path, "--workers", "2"), worker(sweep, tmp_path)]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = load_stored_study("tiny", tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert states(study) == ["COMPLETE"] * 5  # 4 trials + the baseline: none lost, none extra
    assert sum(t.user_attrs["role"] == "baseline" for t in trials) == 1
    records = [r for r in load_records(tmp_path) if "sweep" in r]
    assert sorted(r["sweep"]["trial"] for r in records) == [0, 1, 2, 3, 4]  # one record per trial
    assert {r["run_id"] for r in records} == {t.user_attrs["run_ids"][0] for t in trials}


@pytest.mark.slow
@pytest.mark.xdist_group("sweep-workers")
def test_a_killed_worker_leaves_the_study_resumable_and_its_trial_retried(small_world, tmp_path):
    sweep = write_sweep(tmp_path, small_world, trials=1, baseline=False, epochs=10)
    killed = worker(sweep, tmp_path)
    deadline = time.monotonic() + 120
    # Mid-trial: the trial is claimed and has written its first epoch's checkpoint.
    while not list((tmp_path / "checkpoints").glob("*/last.pt")):
        assert time.monotonic() < deadline and killed.poll() is None, "the worker never reached its first epoch"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    study = load_stored_study("tiny", tmp_path)
    assert states(study) == ["RUNNING"]  # nobody has noticed yet

    assert main(["sweep", str(sweep), "--results-dir", str(tmp_path)]) == 0
    first, retry = study.get_trials(deepcopy=False)
    assert (first.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == first.params == {"gamma": 1e-3}
    records = [r for r in load_records(tmp_path) if "sweep" in r]
    assert len(records) == 1 and records[0]["sweep"]["trial"] == 0 and records[0]["history"][-1]["epoch"] == 10


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"trails": 5}, ["unknown key 'trails'", "did you mean 'trials'"]),
        ({"search_space": {"gamma": {"low": 1e-3, "high": 1e-3}}}, ["search_space.gamma", "empty or inverted"]),
        ({"search_space": {"gamma": {"low": 1e-1, "high": 1e-5}}}, ["search_space.gamma", "empty or inverted"]),
        ({"search_space": {"gamma": {"low": 0.0, "high": 1e-1}}}, ["search_space.gamma", "log range"]),
        ({"search_space": {"gamma": {"low": 1e-5, "high": 1e-1, "step": 2}}}, ["unknown key 'step'"]),
        ({"search_space": {"rho": {"low": 1e-5, "high": 1e-1}}}, ["search_space.rho", "not a searchable"]),
        ({"search_space": {}}, ["search_space is empty"]),
        ({"method": "combinr"}, ["combinr", "did you mean combiner"]),
        ({"objective": "all.R@1"}, ["objective 'all.R@1'", "fashioniq"]),
        ({"trials": 0}, ["trials must be at least 1"]),
        ({"enqueue": [{"gamma": 5.0}]}, ["enqueue", "gamma=5.0"]),
        ({"run": {"epochs": "many"}}, ["epochs"]),
        ({"run": {"seed": 3}}, ["run.seed", "set by the sweep"]),
        ({"search_space": [1, 2]}, ["search_space must be a mapping"]),
        ({"enqueue": [0.001]}, ["enqueue must list mappings"]),
        ({"grace_seconds": 1}, ["grace_seconds > heartbeat_seconds"]),
    ],
)
def test_bad_sweep_definition_is_one_line_and_nothing_is_written(capsys, small_world, tmp_path, overrides, needles):
    sweep = write_sweep(tmp_path, small_world, **overrides)
    results = tmp_path / "results"
    assert main(["sweep", str(sweep), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(n in err for n in needles), err
    assert not results.exists()


@pytest.mark.parametrize(
    "url", ["sqlite:////nonexistent-folder/sub/study.db", "postgresql://alice:s3cret@127.0.0.1:9/studies"]
)
def test_unreachable_storage_is_one_line_and_nothing_is_written(capsys, small_world, tmp_path, url):
    sweep = write_sweep(tmp_path, small_world)
    results = tmp_path / "results"
    assert main(["sweep", str(sweep), "--results-dir", str(results), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--storage" in err and "cannot open" in err, err
    assert "s3cret" not in err
    assert not results.exists()


def test_sweep_report_of_an_unknown_study_is_one_line(capsys, tmp_path):
    assert main(["sweep-report", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "no study storage" in capsys.readouterr().err


def test_the_embedded_studies_are_valid():
    from sweeps.study import load_sweep

    for path in sorted((REPO_ROOT / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        assert sweep.name == path.stem and sweep.trials >= 1
        assert json.dumps(sweep.definition())  # storable as a study attribute


@pytest.mark.slow
def test_pruned_trials_record_where_they_stopped_and_are_never_best(small_world, tmp_path, monkeypatch):
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    sweep = write_sweep(tmp_path, small_world, trials=2, epochs=3, pruner="median")
    assert main(["sweep", str(sweep), "--results-dir", str(tmp_path)]) == 0
    study = load_stored_study("tiny", tmp_path)
    assert states(study) == ["COMPLETE", "PRUNED", "PRUNED"]  # the baseline is never pruned
    records = sorted((r for r in load_records(tmp_path) if "sweep" in r), key=lambda r: r["sweep"]["trial"])
    assert [r["history"][-1]["epoch"] for r in records] == [3, 1, 1]
    assert [r.get("stopped", {}).get("epoch") for r in records] == [None, 1, 1]
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "| wrf(" not in board  # no complete trial: the table shows only the baseline
