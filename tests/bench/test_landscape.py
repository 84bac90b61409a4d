"""Loss landscapes (bench.landscape): the stored section, exact weight restoration, filter normalisation, bad input.

One tiny combiner run is trained per module; each test works on its own copy of the run's record (the copy
points at the same checkpoint folder), so the tests never see each other's rewrites.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from bench.landscape import add_landscape, filter_normalized_direction
from bench.train import RunConfig, load_checkpoint, train

SMALL = dict(points=5, grid=3, samples=128)


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    """The record path of a one-epoch combiner run on the small world."""
    config = RunConfig(method="combiner", dataset="synth-cirr", data_root=str(small_world), pretrained="none", epochs=1)
    return train(config, tmp_path_factory.mktemp("landscape-run"))


def record_copy(trained, tmp_path, edit=None):
    """A copy of the trained run's record under ``tmp_path/runs`` (optionally edited); returns (results, run id)."""
    record = json.loads(trained.read_text())
    if edit is not None:
        edit(record)
    (tmp_path / "runs").mkdir(parents=True)
    (tmp_path / "runs" / trained.name).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return tmp_path, record["run_id"]


def best_checkpoint(trained):
    return Path(json.loads(trained.read_text())["checkpoint_dir"]) / "best.pt"


def test_landscape_section_has_the_documented_shape(trained, tmp_path):
    results, run_id = record_copy(trained, tmp_path)
    before = json.loads((results / "runs" / trained.name).read_text())
    path = add_landscape(run_id, results, gammas=(1e-4, 1e-3), **SMALL)
    assert path == results / "runs" / trained.name
    record = json.loads(path.read_text())
    landscape = record.pop("landscape")
    assert record == before
    config = before["config"]
    assert landscape["checkpoint"] == "best" and landscape["seed"] == 0
    assert landscape["samples"] == 128 and landscape["batch_size"] == config["batch_size"]
    # The combiner's perturbed tensors: the Linear weights of its five projections/branches (biases are 1-D).
    assert landscape["tensors"] == 6
    checkpoint = load_checkpoint(best_checkpoint(trained))["trainable"]
    assert landscape["parameters"] == sum(t.numel() for t in checkpoint.values() if t.ndim >= 2)

    line, surface = landscape["line"], landscape["surface"]
    assert line["alphas"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and len(line["loss"]) == 5
    assert surface["alphas"] == surface["betas"] == [-1.0, 0.0, 1.0]
    assert [len(row) for row in surface["loss"]] == [3, 3, 3]
    center = landscape["center_loss"]
    assert math.isfinite(center) and center > 0
    # Evaluated after other perturbed points: equal only if every evaluation restored the exact weights.
    assert line["loss"][2] == pytest.approx(center, abs=1e-6)
    assert surface["loss"][1][1] == pytest.approx(center, abs=1e-6)
    # A random direction of the weights' own size leaves the trained minimum's basin at least somewhat.
    assert max(line["loss"][0], line["loss"][-1]) > center

    sharpness = landscape["sharpness"]
    assert sharpness["gammas"] == [1e-4, 1e-3] and len(sharpness["loss_increase"]) == 2
    # First order: along the gradient, a small step raises the loss.
    assert sharpness["loss_increase"][0] > 0
    assert landscape["seconds"] > 0


def test_weights_are_restored_and_runs_repeat_exactly(trained, tmp_path, monkeypatch):
    import bench.train

    results, _ = record_copy(trained, tmp_path)
    record_path = results / "runs" / trained.name
    prepared = []
    original = bench.train.prepare_run

    def spy(*args, **kwargs):
        prepared.append(original(*args, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(bench.train, "prepare_run", spy)
    # A path to the record works as well as a run id.
    first = json.loads(add_landscape(str(record_path), results, progress=False, **SMALL).read_text())["landscape"]
    second = json.loads(add_landscape(str(record_path), results, progress=False, **SMALL).read_text())["landscape"]
    for key in ("center_loss", "line", "surface", "sharpness"):
        assert first[key] == second[key]

    saved = load_checkpoint(best_checkpoint(trained))["trainable"]
    method = prepared[0].method
    for name, parameter in method.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter.detach().cpu(), saved[name]), name
            assert parameter.grad is None


@pytest.mark.parametrize(
    "shape", [(6, 4), (3, 2, 5, 5), (7,), (), (1, 9)], ids=["linear", "conv", "bias", "scalar", "one-filter"]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_normalized_direction_matches_each_filter_norm(shape, seed):
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed)) * (1 + 10 * seed)
    if len(shape) >= 2:
        weights[0] = 0  # a dead filter stays dead
    (direction,) = filter_normalized_direction([weights], torch.Generator().manual_seed(seed))
    assert direction.shape == weights.shape and direction.dtype == weights.dtype

    def filter_norms(tensor):
        return torch.linalg.vector_norm(tensor.reshape(tensor.shape[0] if tensor.ndim else 1, -1), dim=1)

    torch.testing.assert_close(filter_norms(direction), filter_norms(weights), rtol=1e-5, atol=1e-7)
    (again,) = filter_normalized_direction([weights], torch.Generator().manual_seed(seed))
    assert torch.equal(direction, again)


def test_two_draws_from_one_generator_differ():
    weights = [torch.randn(8, 3), torch.randn(4, 4, 2)]
    generator = torch.Generator().manual_seed(0)
    first = filter_normalized_direction(weights, generator)
    second = filter_normalized_direction(weights, generator)
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def drop_checkpoint_dir(record):
    del record["checkpoint_dir"]


def overhead_kind(record):
    record["kind"] = "overhead"


def elsewhere(record):
    record["checkpoint_dir"] = "/nonexistent/checkpoints/run"


@pytest.mark.parametrize(
    "edit, overrides, needles",
    [
        (None, {"points": 2}, ["--points", "at least 3"]),
        (None, {"grid": 1}, ["--grid", "at least 3"]),
        (None, {"span": 0.0}, ["--span", "positive"]),
        (None, {"span": float("nan")}, ["--span", "nan"]),
        (None, {"samples": 0}, ["--samples", "at least 1"]),
        (None, {"gammas": (1e-3, 0.0)}, ["--gammas", "0.0"]),
        (None, {"gammas": (float("inf"),)}, ["--gammas", "inf"]),
        (None, {"gammas": (-1e-3,)}, ["--gammas", "-0.001"]),
        (None, {"checkpoint": "middle"}, ["--checkpoint", "best, last", "'middle'"]),
        (None, {"run": "no-such-run"}, ["'no-such-run'", "no record no-such-run.json under", "runs"]),
        (None, {"run": "elsewhere/missing.json"}, ["missing.json", "no such record file"]),
        (drop_checkpoint_dir, {}, ["is not a training run", "no checkpoint_dir"]),
        (overhead_kind, {}, ["is not a training run"]),
        (elsewhere, {}, ["checkpoint /nonexistent/checkpoints/run/best.pt does not exist"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, edit, overrides, needles):
    results, run_id = record_copy(trained, tmp_path, edit)
    before = {p.name: p.read_bytes() for p in (results / "runs").iterdir()}
    settings = {"run": run_id, **SMALL, **overrides}
    with pytest.raises(BenchError) as caught:
        add_landscape(results_dir=results, **settings)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    assert {p.name: p.read_bytes() for p in (results / "runs").iterdir()} == before


def test_a_mistyped_run_id_suggests_the_close_one(trained, tmp_path):
    results, run_id = record_copy(trained, tmp_path)
    typo = run_id[:-1] + ("x" if run_id[-1] != "x" else "y")
    with pytest.raises(BenchError, match=rf"run '{typo}': no record {typo}.json under .*runs; did you mean {run_id}\?"):
        add_landscape(typo, results, **SMALL)


def test_a_checkpoint_that_does_not_fit_is_rejected(trained, tmp_path):
    run_id = json.loads(trained.read_text())["run_id"]
    folder = tmp_path / "checkpoints"
    shutil.copytree(best_checkpoint(trained).parent, folder)
    payload = torch.load(folder / "best.pt", weights_only=False)
    name = next(iter(payload["trainable"]))
    payload["trainable"][name] = torch.zeros(1, 1)
    torch.save(payload, folder / "best.pt")
    results, _ = record_copy(trained, tmp_path / "results", lambda r: r.update(checkpoint_dir=str(folder)))
    with pytest.raises(BenchError, match=rf"run {run_id}: .*best.pt does not fit the run's method"):
        add_landscape(run_id, results, **SMALL)


def test_a_lora_run_perturbs_only_its_adapters(small_world, tmp_path):
    config = RunConfig(
        method="combiner", dataset="synth-cirr", data_root=str(small_world), pretrained="none", epochs=1, lora=True
    )
    path = train(config, tmp_path)
    landscape = json.loads(add_landscape(str(path), tmp_path, **SMALL).read_text())["landscape"]
    adapters = load_checkpoint(best_checkpoint(path))["trainable"]
    assert adapters and all("lora_" in name for name in adapters)
    assert landscape["tensors"] == len(adapters) == 12
    assert landscape["parameters"] == sum(t.numel() for t in adapters.values())
    assert landscape["line"]["loss"][2] == pytest.approx(landscape["center_loss"], abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["no-such-run"], "run 'no-such-run'"),
        (["x", "--gammas", "1e-3,big"], "--gammas"),
        (["x", "--grid", "2"], "--grid"),
    ],
)
def test_landscape_command_errors_are_one_line(capsys, tmp_path, argv, needle):
    from bench.cli import main

    assert main(["landscape", *argv, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
