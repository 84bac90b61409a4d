"""The one training loop for every CIR method.

Each epoch evaluates on val AND on a fixed subset of train triplets ranked against a train gallery of the val
gallery's size, so every run records its generalization-gap curve. Best and last checkpoints are written
atomically; ``resume`` continues bit-identically on CPU; a non-finite loss stops the run with a clear error and
keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.base import CIRSplit
from bench.errors import BenchError

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run. ``None`` means "the method's default" (its ``Recipe``/``Config``)."""

    method: str = "combiner"
    dataset: str = "synth-fiq"
    data_root: str | None = None
    backbone: str | None = None
    pretrained: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    accumulation_steps: int = 1
    reg: str = "none"
    reg_settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 512
    gap_subset: bool = True
    feature_cache: bool = True
    checkpoint_root: str | None = None  # default: <results_dir>/checkpoints

    def check(self) -> None:
        """One-line errors for settings that can never train."""
        for name in ("epochs", "batch_size", "accumulation_steps", "eval_batch_size", "lora_rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
        for name in ("lr", "weight_decay", "lora_alpha", "lora_dropout"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise BenchError(f"--{name.replace('_', '-')}: must be a finite non-negative number, got {value}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise BenchError(f"--schedule: unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise BenchError(f"--device: unknown device {self.device!r} (auto, cpu or cuda[:N])")
        from bench.config import resolve_config
        from bench.regularize import settings_class

        resolve_config(settings_class(self.reg), self.reg_settings, {}, source=f"--reg {self.reg}")


def resolve_device(name: str) -> str:
    """``auto`` is CUDA when available, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device: {name} requested but CUDA is not available")
    return name


def build_method(config: RunConfig):
    """The configured method, with LoRA adapters injected when ``config.lora`` is set."""
    from methods import create_method

    settings = dict(config.method_options)
    for name in ("backbone", "pretrained"):
        if getattr(config, name) is not None:
            settings[name] = getattr(config, name)
    method = create_method(config.method, **settings)
    if config.lora:
        apply_lora(method, config)
    return method


def apply_lora(method, config: RunConfig) -> None:
    """Inject LoRA adapters (peft) into each trainable tower of ``method``; only the adapters train then.

    Everything else is frozen, heads and temperatures included, so a LoRA run's trainable parameters are
    exactly its adapters (also what a regularizer perturbs).
    """
    from peft import LoraConfig, inject_adapter_in_model

    towers = method.lora_targets()
    if not towers:
        raise BenchError(f"--lora: method {config.method!r} has no trainable tower to adapt")
    method.requires_grad_(False)
    for attribute, default_targets in towers.items():
        tower = method.get_submodule(attribute)
        targets = list(config.lora_targets or default_targets)
        lora = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets
        )
        try:
            inject_adapter_in_model(lora, tower)
        except ValueError as exc:
            raise BenchError(
                f"--lora-targets: {', '.join(targets)} match no module of {attribute} "
                f"in method {config.method!r} ({str(exc).splitlines()[0][:120]})"
            ) from None
    if not any(p.requires_grad for p in method.parameters()):
        raise BenchError(f"--lora: method {config.method!r} has nothing to adapt")


def trainable_state(method) -> dict[str, Any]:
    """The trainable tensors of ``method`` by name (what a checkpoint must hold; frozen parts rebuild from config)."""
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


def gap_split(train: CIRSplit, val: CIRSplit, seed: int) -> CIRSplit:
    """A fixed subset of train queries (as many as val) ranked against a train gallery of val's size.

    The gallery holds the subset's references, targets (and CIRR members), topped up with other train images
    drawn at random, so train targets compete with as many look-alikes as val targets do. When those images
    alone would outnumber val's gallery (CIRR: every query brings its six-image set), queries are taken in random
    order only while their images still fit, i.e. whole sets, as in val.
    """
    rng = random.Random(f"gap:{seed}:{train.name}")
    labelled = [q for q in train.queries if q.target is not None]
    budget = len(val.gallery_names)
    queries = rng.sample(labelled, min(len(val.queries), len(labelled)))
    needed = _gallery_needs(queries)
    if len(needed) > budget:
        queries, needed = [], {}
        for query in rng.sample(labelled, len(labelled)):
            extra = [name for name in _gallery_needs([query]) if name not in needed]
            if len(needed) + len(extra) <= budget:
                queries.append(query)
                needed.update(dict.fromkeys(extra))
            if len(queries) == len(val.queries):
                break
    others = [n for n in train.gallery_names if n not in needed]
    rng.shuffle(others)
    gallery = list(needed) + others[: max(0, len(val.gallery_names) - len(needed))]
    # Keep the split's gallery order (ties rank by gallery index); names outside the split file go last.
    position = {name: i for i, name in enumerate(train.gallery_names)}
    gallery.sort(key=lambda name: position.get(name, len(position)))
    return dataclasses.replace(train, split="train-gap", queries=tuple(queries), gallery_names=tuple(gallery))


def _gallery_needs(queries) -> dict[str, None]:
    """The images ``queries`` need in a gallery (references, targets, CIRR members), in first-use order."""
    needed: dict[str, None] = {}
    for query in queries:
        for name in (query.reference, query.target, *(query.members or ())):
            needed.setdefault(name, None)
    return needed


def build_optimizer(method, lr: float, weight_decay: float, recipe, total_steps: int, schedule: str):
    """AdamW over the trainable parameters with the recipe's betas/eps and a per-step LR schedule."""
    import torch

    parameters = [p for p in method.parameters() if p.requires_grad]
    if not parameters:
        raise BenchError(f"method {method.method_name!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=recipe.betas, eps=recipe.eps, weight_decay=weight_decay)
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(total_steps, 2), pct_start=0.1, anneal_strategy="cos"
        )
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def median_phases(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per step phase (and of the whole step) over ``steps``."""
    import statistics

    if not steps:
        return {}
    phases = {phase for step in steps for phase in step}
    medians = {phase: statistics.median(step.get(phase, 0.0) for step in steps) for phase in sorted(phases)}
    medians["step"] = statistics.median(sum(step.values()) for step in steps)
    return medians


def peak_memory_bytes(device: str) -> int:
    """Peak memory of this run: CUDA max allocated, or the process's peak resident set size."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_timing(history: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """The run's timing summary: median step phases over its epochs, training seconds and peak memory."""
    import statistics

    epochs = [entry for entry in history if entry.get("step_seconds")]
    phases = sorted({phase for entry in epochs for phase in entry["step_seconds"]})
    return {
        "device": device,
        "clock": "cuda-events" if device.startswith("cuda") else "perf_counter",
        "step_seconds": {p: statistics.median(e["step_seconds"].get(p, 0.0) for e in epochs) for p in phases},
        "train_seconds": sum(entry["train_time_s"] for entry in epochs),
        "peak_memory_bytes": peak_memory_bytes(device),
    }


def encode_split(method, split: CIRSplit, images, texts, batch_size: int):
    """Query and gallery features of ``split`` from the method (in eval mode, no gradients)."""
    import torch

    queries, gallery = [], []
    with torch.no_grad():
        for start in range(0, len(split.queries), batch_size):
            batch = split.queries[start : start + batch_size]
            reference = images.take([q.reference for q in batch])
            text = texts.take([split.query_text(q) for q in batch])
            queries.append(method.encode_queries(reference, text).float())
        for start in range(0, len(split.gallery_names), batch_size):
            gallery.append(method.encode_targets(images.take(split.gallery_names[start : start + batch_size])).float())
    return torch.cat(queries), torch.cat(gallery)


def selection_score(layout: str, metrics: dict[str, dict[str, float]]) -> float:
    """CLIP4Cir's checkpoint selection: FashionIQ (mean R@10 + mean R@50) / 2; CIRR the mean of all recalls."""
    if layout == "fashioniq":
        return metrics["average"]["Avg"]
    values = [v for k, v in metrics["all"].items() if k != "Avg"]
    return sum(values) / len(values)


def evaluate_splits(method, splits, images, texts, layout: str, batch_size: int):
    """Aggregated metrics and per-query hit strings of ``splits`` (one per FashionIQ category, or CIRR's one)."""
    from bench.evaluate import aggregate, hits_to_strings, score_split

    method.eval()
    per_subset, per_query = {}, {}
    for split in splits:
        queries, gallery = encode_split(method, split, images, texts, batch_size)
        score = score_split(split, queries, gallery)
        per_subset[split.subset or "all"] = score.metrics
        per_query[split.subset or "all"] = hits_to_strings(score.hits)
    return aggregate(layout, per_subset), per_query


class NonFiniteLoss(Exception):
    """Raised by the closure before any optimizer step when the loss is NaN or infinite."""

    def __init__(self, loss: float) -> None:
        super().__init__(loss)
        self.loss = loss


class BatchClosure:
    """One optimisation step's loss closure: zero the grads, forward and backward every micro-batch, return the loss.

    Regularizers may call it more than once per step (at perturbed weights); ``first_terms`` keeps the
    sample-weighted loss terms of the first call, i.e. at the unperturbed weights, for the epoch's loss curve.
    """

    def __init__(self, method, optimizer, scaler, images, texts, triplets, group, amp: bool) -> None:
        self.method, self.optimizer, self.scaler = method, optimizer, scaler
        self.images, self.texts, self.triplets, self.group, self.amp = images, texts, triplets, group, amp
        self.first_terms: dict[str, float] | None = None

    def __call__(self) -> float:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        weight = sum(len(indices) for indices, _ in self.group)
        total, terms_sum = 0.0, {}
        for indices, batch_texts in self.group:
            reference = self.images.take([self.triplets[i][0] for i in indices])
            target = self.images.take([self.triplets[i][2] for i in indices])
            with torch.autocast("cuda", enabled=self.amp):
                terms = self.method.losses(reference, self.texts.take(batch_texts), target)
                loss = sum(terms.values()) * (len(indices) / weight)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
            for name, value in terms.items():
                terms_sum[name] = terms_sum.get(name, 0.0) + float(value.detach()) * len(indices)
        if not math.isfinite(total):
            raise NonFiniteLoss(total)
        if self.first_terms is None:
            self.first_terms = terms_sum
        return total


@dataclass
class _State:
    """What a checkpoint holds besides weights: progress, history and the best epoch so far."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_metrics: dict[str, Any] | None = None
    best_per_query: dict[str, Any] | None = None
    regularizer_steps: int = 0


def _save_checkpoint(path: Path, method, optimizer, scheduler, state: _State) -> None:
    import torch

    from bench.io import atomic_write

    payload = {
        "trainable": trainable_state(method),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by the training loop (one-line error if it is not one)."""
    import torch

    try:
        payload = torch.load(path, weights_only=False, map_location="cpu")
    except FileNotFoundError:
        raise BenchError(f"--resume: {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise BenchError(f"--resume: {path} is not a training checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or "trainable" not in payload:
        raise BenchError(f"--resume: {path} is not a training checkpoint")
    return payload


@dataclass
class PreparedRun:
    """Everything a run trains on, built once: the resolved config, method, regularizer and model inputs."""

    config: RunConfig
    spec: Any
    method: Any
    regularizer: Any
    images: Any
    texts: Any
    triplets: list[tuple[str, tuple[str, ...], str]]
    eval_sets: list[tuple[str, list[CIRSplit]]]
    device: str


def prepare_run(config: RunConfig, evaluation: bool = True) -> PreparedRun:
    """Load the data, build the method (and LoRA) and the regularizer, fill the recipe's defaults into ``config``,
    and compute the model inputs (frozen-tower features from the cache). Every input is validated before the
    expensive parts start."""
    import torch

    from bench.data import get_dataset
    from bench.features import build_image_inputs, build_text_inputs
    from bench.regularize import create as create_regularizer

    config.check()
    spec = get_dataset(config.dataset)
    root = spec.root(config.data_root)
    train_splits = spec.load("train", root)
    val_splits = spec.load("val", root) if evaluation else []
    device = resolve_device(config.device)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    method = build_method(config)
    regularizer = create_regularizer(config.reg, method, **config.reg_settings)
    recipe = method.recipe
    config = dataclasses.replace(
        config,
        epochs=config.epochs or recipe.epochs,
        batch_size=config.batch_size or recipe.batch_size,
        lr=config.lr if config.lr is not None else recipe.lr,
        weight_decay=config.weight_decay if config.weight_decay is not None else recipe.weight_decay,
        schedule=config.schedule or recipe.schedule,
    )
    eval_sets: list[tuple[str, list[CIRSplit]]] = []
    if evaluation:
        gap_splits = [gap_split(t, v, config.seed) for t, v in zip(train_splits, val_splits, strict=True)]
        eval_sets = [("val", val_splits)] + ([("train", gap_splits)] if config.gap_subset else [])

    images = build_image_inputs(method, train_splits + val_splits, use_cache=config.feature_cache)
    triplets = [(q.reference, s.training_texts(q), q.target) for s in train_splits for q in s.queries]
    all_texts = [t for _, variants, _ in triplets for t in variants]
    all_texts += [s.query_text(q) for _, splits in eval_sets for s in splits for q in s.queries]
    texts = build_text_inputs(method, all_texts, use_cache=config.feature_cache)
    method.to(device)
    images.tensor = images.tensor.to(device)
    if texts.features is not None:
        texts.features = texts.features.to(device)
    return PreparedRun(config, spec, method, regularizer, images, texts, triplets, eval_sets, device)


def train(
    config: RunConfig,
    results_dir: Path | str = "results",
    resume: Path | str | None = None,
    stop_after_epoch: int | None = None,
    progress: bool | None = None,
    on_epoch: Callable[[int, dict[str, Any]], str | None] | None = None,
    record_fields: dict[str, Any] | None = None,
) -> Path | None:
    """Train ``config`` and write its result record; returns the record path.

    ``resume`` is a run's checkpoint folder: training continues from its last checkpoint with the saved config.
    ``stop_after_epoch`` ends the run early after that epoch's checkpoint (no record; resume it later).
    ``on_epoch(epoch, val_metrics)`` is called after each epoch's checkpoint (a sweep's pruner): a returned reason
    stops the run there and the record says so under ``stopped`` (epoch, reason); its metrics are those of the
    best epoch so far. ``record_fields`` are extra sections of the record (e.g. ``sweep``).
    """
    import torch
    from tqdm import tqdm

    from bench.config import config_dict
    from bench.io import write_json
    from bench.records import make_run_id, new_record, write_record

    checkpoint_dir = None
    payload = None
    if resume is not None:
        checkpoint_dir = Path(resume)
        saved = checkpoint_dir / "config.json"
        if not saved.is_file():
            raise BenchError(f"--resume: {checkpoint_dir} has no config.json (not a run's checkpoint folder)")
        import json

        from bench.config import resolve_config

        config = resolve_config(RunConfig, json.loads(saved.read_text()), {}, source=str(saved))
        payload = load_checkpoint(checkpoint_dir / "last.pt")

    run = prepare_run(config)
    config, spec, method, regularizer = run.config, run.spec, run.method, run.regularizer
    images, texts, triplets, eval_sets, device = run.images, run.texts, run.triplets, run.eval_sets, run.device
    recipe = method.recipe

    steps_per_epoch = math.ceil(len(triplets) / (config.batch_size * config.accumulation_steps))
    optimizer, scheduler = build_optimizer(
        method, config.lr, config.weight_decay, recipe, steps_per_epoch * config.epochs, config.schedule
    )
    state = _State()
    if payload is None:
        run_id = make_run_id(config.method, config.dataset, f"s{config.seed}")
        checkpoint_dir = Path(config.checkpoint_root or Path(results_dir) / "checkpoints") / run_id
        write_json(checkpoint_dir / "config.json", config_dict(config))
    else:
        run_id = checkpoint_dir.name
        method.load_state_dict(payload["trainable"], strict=False)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = _State(**payload["state"])
        torch.set_rng_state(payload["torch_rng"])
        regularizer.steps = state.regularizer_steps

    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    regularizer.scaler = scaler
    batch = config.batch_size

    def evaluate_epoch(entry: dict[str, Any]):
        """Add val and train-gap metrics to ``entry``; returns val's metrics and per-query hits."""
        for label, splits in eval_sets:
            metrics, per_query = evaluate_splits(method, splits, images, texts, spec.layout, config.eval_batch_size)
            entry[label] = metrics
            if label == "val":
                val = metrics, per_query
        return val

    if not state.history:
        # Epoch 0: the untrained model, the baseline every gap curve and "did training help" starts from.
        entry = {"epoch": 0}
        evaluate_epoch(entry)
        state.history.append(entry)
    for epoch in range(state.epoch, config.epochs):
        method.train()
        order = torch.randperm(len(triplets), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        text_rng = random.Random(f"text:{config.seed}:{epoch}")
        chosen = [text_rng.choice(triplets[i][1]) for i in order.tolist()]
        started = time.perf_counter()
        totals: dict[str, float] = {}
        step_seconds: list[dict[str, float]] = []
        micro = [(order[s : s + batch].tolist(), chosen[s : s + batch]) for s in range(0, len(order), batch)]
        groups = [micro[g : g + config.accumulation_steps] for g in range(0, len(micro), config.accumulation_steps)]
        # disable=None lets tqdm hide the bar when stderr is not a terminal (CI logs, tests).
        bar = tqdm(
            groups,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=None if progress is None else not progress,
            leave=False,
        )
        for step, group in enumerate(bar):
            closure = BatchClosure(method, optimizer, scaler, images, texts, triplets, group, amp)
            try:
                loss = regularizer.step(closure, optimizer)
            except NonFiniteLoss as exc:
                last = checkpoint_dir / "last.pt"
                kept = f"last good checkpoint kept at {last}" if last.is_file() else "no checkpoint was written yet"
                raise BenchError(
                    f"run {run_id}: loss became {exc.loss} at epoch {epoch + 1} step {step + 1}; stopped ({kept})"
                ) from None
            step_seconds.append(regularizer.last_seconds)
            scheduler.step()
            for name, value in closure.first_terms.items():
                totals[name] = totals.get(name, 0.0) + value
            bar.set_postfix(loss=f"{loss:.4f}")
        train_time = time.perf_counter() - started
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": {name: value / len(triplets) for name, value in totals.items()},
            "train_time_s": train_time,
            "step_seconds": median_phases(step_seconds),
        }
        val_metrics, val_per_query = evaluate_epoch(entry)
        state.epoch = epoch + 1
        state.regularizer_steps = regularizer.steps
        state.history.append(entry)
        score = selection_score(spec.layout, val_metrics)
        is_best = score > state.best_score
        if is_best:
            state.best_score, state.best_epoch = score, epoch + 1
            state.best_metrics, state.best_per_query = val_metrics, val_per_query
        _save_checkpoint(checkpoint_dir / "last.pt", method, optimizer, scheduler, state)
        if is_best:
            _save_checkpoint(checkpoint_dir / "best.pt", method, optimizer, scheduler, state)
        stop_reason = on_epoch(epoch + 1, val_metrics) if on_epoch is not None else None
        if stop_reason is not None:
            record_fields = {**(record_fields or {}), "stopped": {"epoch": epoch + 1, "reason": stop_reason}}
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            return None

    record = new_record(
        run_id=run_id,
        method=config.method,
        backbone=method.describe_backbone(),
        regime="lora" if config.lora else "full",
        regularizer=regularizer.describe(),
        seed=config.seed,
        dataset=spec.name,
        layout=spec.layout,
        split="val",
        config=config_dict(config),
        metrics=state.best_metrics,
        selected_epoch=state.best_epoch,
        history=state.history,
        per_query=state.best_per_query,
        checkpoint_dir=str(checkpoint_dir),
        timing=run_timing(state.history, device),
        **(record_fields or {}),
    )
    return write_record(record, results_dir)
