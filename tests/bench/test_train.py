"""The training loop end to end on the embedded data: learning, gap curves, resume, failure handling."""

import json

import pytest
import torch

from bench.cli import main
from bench.errors import BenchError
from bench.train import RunConfig, selection_score, train
from methods import list_methods

FAMILY = {"combiner": "clip", "clip4cir": "clip", "blip2": "blip2"}
EPOCHS = {"combiner": 4, "clip4cir": 2, "blip2": 3}


def run_config(world, **overrides):
    settings = dict(method="combiner", dataset="synth-cirr", data_root=str(world), pretrained="none", epochs=2)
    settings.update(overrides)
    return RunConfig(**settings)


@pytest.mark.xdist_group("pretrained")  # one worker pre-trains once for all of these
@pytest.mark.parametrize("name", list_methods())
def test_training_raises_val_recall_above_the_untrained_model(name, small_world, pretrained, tmp_path):
    weights = str(pretrained[FAMILY.get(name, "clip")][0])
    path = train(run_config(small_world, method=name, pretrained=weights, epochs=EPOCHS.get(name, 2)), tmp_path)
    record = json.loads(path.read_text())
    history = record["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS.get(name, 2) + 1))
    untrained = selection_score("cirr", history[0]["val"])
    assert selection_score("cirr", record["metrics"]) > untrained
    for entry in history[1:]:
        assert set(entry) >= {"loss", "val", "train", "train_time_s"}
        assert set(entry["train"]["all"]) == set(entry["val"]["all"])
    assert record["regime"] == "full" and record["backbone"]["family"] == FAMILY.get(name, "clip")
    assert json.loads((tmp_path / "checkpoints" / record["run_id"] / "config.json").read_text())["method"] == name


def test_resume_continues_bit_identically(small_world, tmp_path):
    config = run_config(small_world, epochs=3)
    whole = json.loads(train(config, tmp_path / "whole").read_text())
    assert train(config, tmp_path / "parts", stop_after_epoch=1) is None
    (folder,) = (tmp_path / "parts" / "checkpoints").iterdir()
    resumed = json.loads(train(RunConfig(), tmp_path / "parts", resume=folder).read_text())

    def without_times(history):
        return [{k: v for k, v in entry.items() if k not in ("train_time_s", "step_seconds")} for entry in history]

    assert without_times(resumed["history"]) == without_times(whole["history"])
    assert resumed["metrics"] == whole["metrics"] and resumed["per_query"] == whole["per_query"]
    first = torch.load(tmp_path / "whole" / "checkpoints" / whole["run_id"] / "last.pt", weights_only=False)
    second = torch.load(folder / "last.pt", weights_only=False)
    assert first["trainable"].keys() == second["trainable"].keys()
    assert all(torch.equal(first["trainable"][k], second["trainable"][k]) for k in first["trainable"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_world, tmp_path, monkeypatch):
    from methods.combiner import Combiner

    calls = {"n": 0}
    original = Combiner.losses

    def poisoned(self, reference, text, target):
        calls["n"] += 1
        terms = original(self, reference, text, target)
        return {"contrastive": terms["contrastive"] * float("nan")} if calls["n"] > 3 else terms

    monkeypatch.setattr(Combiner, "losses", poisoned)
    config = run_config(small_world, epochs=3, batch_size=128)
    with pytest.raises(BenchError, match=r"loss became nan at epoch 2 step 1; stopped \(last good checkpoint kept"):
        train(config, tmp_path)
    (folder,) = (tmp_path / "checkpoints").iterdir()
    assert torch.load(folder / "last.pt", weights_only=False)["state"]["epoch"] == 1
    assert not (tmp_path / "runs").exists()


def cli(capsys, *argv):
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--method", "combinr"], ["--method", "did you mean combiner"]),
        (["--backbone", "RN50x5"], ["--backbone"]),
        (["--dataset", "cirrr"], ["--dataset"]),
        (["--lora", "--lora-targets", "nothing"], ["--lora-targets", "nothing"]),
        (["--epochs", "0"], ["--epochs", "at least 1"]),
        (["--lr", "nan"], ["--lr"]),
    ],
)
def test_bad_run_input_is_one_line_before_training(capsys, small_world, tmp_path, argv, needles):
    base = ["run", "--dataset", "synth-cirr", "--data-root", str(small_world), "--pretrained", "none"]
    status, err = cli(capsys, *base, *argv, "--results-dir", str(tmp_path))
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert all(needle in err for needle in needles), err
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_architecture_is_rejected(capsys, small_world, tmp_path):
    from bench.backbones.blip2 import load_blip2

    wrong = tmp_path / "blip2.pt"
    torch.save(load_blip2().model.state_dict(), wrong)
    status, err = cli(
        capsys,
        "run",
        "--dataset",
        "synth-cirr",
        "--data-root",
        str(small_world),
        "--pretrained",
        str(wrong),
        "--results-dir",
        str(tmp_path),
    )
    assert status == 2 and "--pretrained" in err and str(wrong) in err and len(err.strip().splitlines()) == 1


def test_data_root_not_in_the_layout(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    status, err = cli(
        capsys, "run", "--dataset", "cirr", "--data-root", str(tmp_path / "empty"), "--results-dir", str(tmp_path)
    )
    assert status == 2 and "empty" in err and "captions" in err


def test_wrf_run_records_its_settings_and_timing_breakdown(small_world, tmp_path):
    config = run_config(small_world, epochs=1, reg="wrf", reg_settings={"gamma": 0.01})
    record = json.loads(train(config, tmp_path).read_text())
    assert record["regularizer"] == {"name": "wrf", "gamma": 0.01, "warmup_steps": 0, "restore": "before_step"}
    phases = record["history"][1]["step_seconds"]
    assert set(phases) == {"first_pass", "perturb", "second_pass", "restore", "optimizer_step", "step"}
    assert record["timing"]["peak_memory_bytes"] > 0 and record["timing"]["clock"] == "perf_counter"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--reg", "wfr"], ["--reg", "did you mean wrf"]),
        (["--wrf", "--gamma", "-1"], ["--gamma", "non-negative"]),
        (["--wrf", "--gamma", "inf"], ["--gamma"]),
        (["--reg", "sam", "--rho", "0"], ["--rho", "positive"]),
        (["--gamma", "0.01"], ["--gamma", "'none' does not take it"]),
        (["--reg", "sam", "--gamma", "0.01"], ["--gamma", "'sam'"]),
        (["--wrf", "--reg-include", "no_such_parameter"], ["--reg-include", "no_such_parameter"]),
        (["--wrf", "--reg", "sam"], ["--wrf", "conflicts"]),
    ],
)
def test_bad_regularizer_input_is_one_line_before_training(capsys, small_world, tmp_path, argv, needles):
    base = ["run", "--dataset", "synth-cirr", "--data-root", str(small_world), "--pretrained", "none"]
    status, err = cli(capsys, *base, *argv, "--results-dir", str(tmp_path))
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert all(needle in err for needle in needles), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


def test_overhead_command_prints_the_ratio_and_writes_a_record(capsys, small_world, tmp_path):
    status = main(
        [
            "overhead",
            "--method",
            "combiner",
            "--wrf",
            "--dataset",
            "synth-cirr",
            "--data-root",
            str(small_world),
            "--pretrained",
            "none",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--results-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and "wrf / none =" in out and "median (min" in out
    (path,) = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["kind"] == "overhead" and record["overhead"]["steps"] == 3
    assert record["overhead"]["ratio_min"] <= record["overhead"]["ratio_median"] <= record["overhead"]["ratio_max"]


def test_combiner_stage_two_loads_a_clip4cir_checkpoint(small_world, tmp_path):
    stage1 = json.loads(train(run_config(small_world, method="clip4cir", epochs=1), tmp_path).read_text())
    best = tmp_path / "checkpoints" / stage1["run_id"] / "best.pt"
    options = {"stage1_checkpoint": str(best)}
    record = json.loads(train(run_config(small_world, epochs=1, method_options=options), tmp_path).read_text())
    assert record["config"]["method_options"] == options
    from methods import create_method

    combiner = create_method("combiner", pretrained="none", stage1_checkpoint=str(best))
    tuned = torch.load(best, weights_only=False)["trainable"]
    name = next(k for k in tuned if k.startswith("clip_model.visual."))
    assert torch.equal(combiner.state_dict()[name], tuned[name])


def test_stage_two_rejects_a_checkpoint_without_clip_tensors(small_world, tmp_path):
    stage1 = json.loads(train(run_config(small_world, epochs=1), tmp_path).read_text())
    best = tmp_path / "checkpoints" / stage1["run_id"] / "best.pt"
    from methods import create_method

    with pytest.raises(BenchError, match="stage1_checkpoint: .* holds no fully fine-tuned CLIP tensors"):
        create_method("combiner", pretrained="none", stage1_checkpoint=str(best))


def test_on_epoch_sees_val_metrics_and_can_stop_the_run_with_a_record(small_world, tmp_path):
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics["all"]["Avg"]))
        return "enough" if epoch == 2 else None

    record = json.loads(train(run_config(small_world, epochs=4), tmp_path, on_epoch=on_epoch).read_text())
    assert [e for e, _ in seen] == [1, 2] and record["stopped"] == {"epoch": 2, "reason": "enough"}
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2]
    assert seen[record["selected_epoch"] - 1][1] == record["metrics"]["all"]["Avg"]


@pytest.mark.parametrize("dataset", ["synth-cirr", "synth-fiq"])
def test_gap_split_has_vals_gallery_size_and_every_image_its_queries_need(small_world, dataset):
    from bench.data import get_dataset
    from bench.train import gap_split

    spec = get_dataset(dataset)
    root = spec.root(str(small_world))
    for train_split, val_split in zip(spec.load("train", root), spec.load("val", root), strict=True):
        gap = gap_split(train_split, val_split, seed=0)
        assert len(gap.gallery_names) == len(val_split.gallery_names)
        gallery = set(gap.gallery_names)
        for query in gap.queries:
            assert {query.reference, query.target, *(query.members or ())} <= gallery
        # CIRR queries bring whole six-image sets: as many queries as val's gallery can hold, at most val's count.
        assert 0.8 * len(val_split.queries) <= len(gap.queries) <= len(val_split.queries)
