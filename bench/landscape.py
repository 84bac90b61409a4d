"""Loss landscapes and sharpness around a trained run's checkpoint, stored in the run's result record.

Directions follow Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"): Gaussian, then each filter
(slice along dim 0) rescaled to the norm of the matching weight filter, so a step of α moves every filter by the
same fraction of its own size whatever the layer's scale. The perturbed tensors are the ones WRF perturbs
(trainable, ndim >= 2, no lookup tables; under LoRA only the adapters), so the landscape is the one the
regularizer acts on. Sharpness is the loss increase at WRF's own worst-case offset v_l = γ·‖w_l‖·g_l/‖g_l‖.

The loss is the training loss (sum of the method's loss terms) averaged per sample over fixed batches of the
run's training batch size, since in-batch contrastive losses depend on it: a seeded subset of the training
triplets, each with its first text variant, the method in eval mode (no dropout) and in fp32 (no autocast: the
increases at small γ are far below fp16 rounding). Every evaluation copies the saved weights back afterwards.
A non-finite loss (far from w the loss may overflow) is stored as null, keeping the record strict JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError

CHECKPOINTS = ("best", "last")


def filter_normalized_direction(parameters: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Gaussian direction, each filter (slice along dim 0) rescaled to the norm of the matching weight filter
    (Li et al. 2018). A 1-D tensor's filters are its elements, a scalar is one filter; zero filters stay zero."""
    directions = []
    for parameter in parameters:
        weights = parameter.detach().float()
        noise = torch.randn(weights.shape, generator=generator, device=generator.device).to(weights.device)
        rows = weights.reshape(1, 1) if weights.ndim == 0 else weights.reshape(weights.shape[0], -1)
        noise_rows = noise.reshape(rows.shape)
        scale = torch.linalg.vector_norm(rows, dim=1, keepdim=True) / (
            torch.linalg.vector_norm(noise_rows, dim=1, keepdim=True) + 1e-10
        )
        directions.append((noise_rows * scale).reshape(weights.shape).to(parameter.dtype))
    return directions


class _FixedLoss:
    """The method's training loss over fixed batches of (reference, text, target) names, averaged per sample."""

    def __init__(self, method, images, texts, batches: list[tuple[list[str], list[str], list[str]]]) -> None:
        self.method, self.images, self.texts, self.batches = method, images, texts, batches
        self.count = sum(len(references) for references, _, _ in batches)

    def _weighted(self, batch) -> torch.Tensor:
        references, batch_texts, targets = batch
        terms = self.method.losses(
            self.images.take(references), self.texts.take(batch_texts), self.images.take(targets)
        )
        return sum(terms.values()) * (len(references) / self.count)

    def value(self) -> float:
        """The loss at the current weights."""
        with torch.no_grad():
            return sum(float(self._weighted(batch)) for batch in self.batches)

    def gradient(self, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """The loss's gradient with respect to ``parameters``; no ``.grad`` is left on the method afterwards."""
        trainable = [p for p in self.method.parameters() if p.requires_grad]
        for p in trainable:
            p.grad = None
        # One backward per batch, as in training: a single graph over all batches would hold every activation.
        with torch.enable_grad():
            for batch in self.batches:
                self._weighted(batch).backward()
        grads = [None if p.grad is None else p.grad.detach().clone() for p in parameters]
        for p in trainable:
            p.grad = None
        return grads


def _perturbed_loss(loss: _FixedLoss, params, saved, terms: list[tuple[float, list[torch.Tensor]]]) -> float:
    """The loss at saved + Σ scale·direction over ``terms``; the saved weights are copied back afterwards."""
    with torch.no_grad():
        for scale, direction in terms:
            torch._foreach_add_(params, direction, alpha=scale)
    try:
        return loss.value()
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _check_settings(points, grid, span, samples, gammas, checkpoint) -> None:
    if points < 3:
        raise BenchError(f"--points: must be at least 3, got {points}")
    if grid < 3:
        raise BenchError(f"--grid: must be at least 3, got {grid}")
    if not (math.isfinite(span) and span > 0):
        raise BenchError(f"--span: must be a finite positive number, got {span}")
    if samples < 1:
        raise BenchError(f"--samples: must be at least 1, got {samples}")
    for gamma in gammas:
        if not (math.isfinite(gamma) and gamma > 0):
            raise BenchError(f"--gammas: each gamma must be a finite positive number, got {gamma}")
    if checkpoint not in CHECKPOINTS:
        raise BenchError(f"--checkpoint: must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")


def _record_path(run: str, results_dir: Path | str) -> Path:
    """The record file of ``run``: a path to a record JSON, or a run id under ``results_dir/runs``."""
    candidate = Path(run)
    if candidate.suffix == ".json":
        if not candidate.is_file():
            raise BenchError(f"{candidate}: no such record file")
        return candidate
    runs = Path(results_dir) / "runs"
    path = runs / f"{run}.json"
    if path.is_file():
        return path
    import difflib

    close = difflib.get_close_matches(run, sorted(p.stem for p in runs.glob("*.json")), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise BenchError(f"run {run!r}: no record {path.name} under {runs}{hint}")


def _read_record(path: Path) -> dict[str, Any]:
    from bench.records import validate_record

    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    validate_record(record, source=str(path))
    if not isinstance(record.get("checkpoint_dir"), str) or record.get("kind") == "overhead":
        raise BenchError(
            f"{path}: run {record['run_id']} is not a training run (no checkpoint_dir; "
            "zero-shot and overhead records hold no weights)"
        )
    return record


def _load_weights(method, checkpoint: Path, run_id: str) -> None:
    """Load ``checkpoint``'s trainable tensors into ``method``, which must hold exactly those trainable tensors."""
    from bench.train import load_checkpoint

    try:
        payload = load_checkpoint(checkpoint)
    except BenchError as exc:
        # load_checkpoint words its errors for --resume; here the checkpoint comes from the record.
        raise BenchError(f"run {run_id}: {str(exc).removeprefix('--resume: ')}") from None
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    try:
        result = method.load_state_dict(payload["trainable"], strict=False)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise BenchError(f"run {run_id}: {checkpoint} does not fit the run's method ({reason})") from None
    missing = sorted(trainable & set(result.missing_keys))
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        what = f"lacks tensor {missing[0]}" if missing else f"has unknown tensor {unexpected[0]}"
        raise BenchError(f"run {run_id}: {checkpoint} does not fit the run's method ({what})")


def add_landscape(
    run: str,
    results_dir: Path | str = "results",
    points: int = 21,
    grid: int = 11,
    span: float = 1.0,
    samples: int = 512,
    gammas: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
    seed: int = 0,
    checkpoint: str = "best",
    progress: bool | None = None,
) -> Path:
    """Compute the landscape of a run and store it in the run's record (rewritten atomically); returns the record path.

    ``run`` is a run id (``results_dir/runs/<run_id>.json``) or a path to a record JSON. The record gains a
    ``landscape`` section: the loss at the checkpoint (``center_loss``), along w + α·d1 for ``points`` values of
    α in [-span, span] (``line``), over w + α·d1 + β·d2 on a ``grid`` x ``grid`` mesh (``surface``, loss[i][j] at
    alphas[i], betas[j]), and the increase L(w + v_γ) − L(w) at WRF's ascent offset for each γ in ``gammas``
    (``sharpness``). d1 and d2 are filter-normalised directions drawn with ``seed``, which also picks the
    ``samples`` training triplets (all when there are fewer). ``seconds`` is the time of the loss evaluations.
    Bad input is a one-line ``BenchError`` raised before anything is written.
    """
    from tqdm import tqdm

    from bench.config import resolve_config
    from bench.io import write_json
    from bench.records import git_commit, validate_record
    from bench.regularize import create
    from bench.train import RunConfig, prepare_run

    _check_settings(points, grid, span, samples, gammas, checkpoint)
    path = _record_path(run, results_dir)
    record = _read_record(path)
    run_id = record["run_id"]
    checkpoint_file = Path(record["checkpoint_dir"]) / f"{checkpoint}.pt"
    if not checkpoint_file.is_file():
        raise BenchError(f"run {run_id}: checkpoint {checkpoint_file} does not exist")
    config = resolve_config(RunConfig, record["config"], {}, source=f"{path}: config")

    prepared = prepare_run(config, evaluation=False)
    method, batch_size = prepared.method, prepared.config.batch_size
    _load_weights(method, checkpoint_file, run_id)
    method.eval()
    wrf = create("wrf", method)
    params = [p for _, p in wrf.targets]
    saved = [p.detach().clone() for p in params]

    triplets = prepared.triplets
    order = torch.randperm(len(triplets), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    chosen = [triplets[i] for i in order]
    batches = [
        ([t[0] for t in part], [t[1][0] for t in part], [t[2] for t in part])
        for part in (chosen[s : s + batch_size] for s in range(0, len(chosen), batch_size))
    ]
    loss = _FixedLoss(method, prepared.images, prepared.texts, batches)

    generator = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(params, generator)
    d2 = filter_normalized_direction(params, generator)
    # Symmetric by construction, with an exact 0 in the middle when the count is odd.
    alphas = [span * (2 * i / (points - 1) - 1) for i in range(points)]
    mesh = [span * (2 * i / (grid - 1) - 1) for i in range(grid)]

    started = time.perf_counter()
    center = loss.value()
    bar = tqdm(
        total=len(gammas) + points + grid * grid,
        desc=f"landscape {run_id}",
        disable=None if progress is None else not progress,
        leave=False,
    )
    increases: list[float | None] = []
    if gammas:
        gradient = loss.gradient(params)
        for gamma in gammas:
            offsets = wrf.scaled_directions(gradient, gamma)
            if all(offset is None for offset in offsets):
                # A non-finite gradient gives no ascent offset: there is no increase to report.
                increases.append(None)
            else:
                # A tensor the loss does not reach has no gradient and stays put.
                ascent = [
                    torch.zeros_like(p) if o is None else o.to(p.dtype) for p, o in zip(params, offsets, strict=True)
                ]
                increases.append(_finite(_perturbed_loss(loss, params, saved, [(1.0, ascent)]) - center))
            bar.update()
    line = []
    for alpha in alphas:
        line.append(_finite(_perturbed_loss(loss, params, saved, [(alpha, d1)])))
        bar.update()
    surface = []
    for alpha in mesh:
        row = []
        for beta in mesh:
            row.append(_finite(_perturbed_loss(loss, params, saved, [(alpha, d1), (beta, d2)])))
            bar.update()
        surface.append(row)
    bar.close()

    record["landscape"] = {
        "checkpoint": checkpoint,
        "samples": len(chosen),
        "batch_size": batch_size,
        "seed": seed,
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "center_loss": _finite(center),
        "line": {"alphas": alphas, "loss": line},
        "surface": {"alphas": mesh, "betas": list(mesh), "loss": surface},
        "sharpness": {"gammas": [float(g) for g in gammas], "loss_increase": increases},
        "seconds": time.perf_counter() - started,
        "git_commit": git_commit(),  # the record's own commit is the training's; this one computed the landscape
    }
    validate_record(record, source=str(path))
    return write_json(path, record)
