"""Training-time weight regularizers: WRF and its family, as one portable axis independent of the method.

::

    reg = bench.regularize.create(name, model, **settings)   # name in list_regularizers()
    loss = reg.step(closure, optimizer)   # closure(): zero grads, forward, backward, return the loss

A regularizer sees only the model's trainable tensors and a loss closure, never which CIR method it trains.

- ``none``: closure, then the optimizer step.
- ``wrf`` (WRF4CIR, Yu et al., arXiv 2604.05583): one ascent step per tensor, e_l = γ·‖w_l‖·g_l / (‖g_l‖ + 1e-12),
  the gradient taken again at w + e, the saved weights copied back, then the optimizer steps with that gradient.
- ``wrf-momentum``: the efficient variant: the ascent direction is the optimizer's first moment (Adam's
  ``exp_avg``, or SGD's momentum buffer) instead of a fresh gradient, so every step costs ONE forward and backward
  (at w + e). Momentum-direction perturbation as in MSAM (Becker et al., "Momentum-SAM: Sharpness Aware
  Minimization without Computational Overhead", arXiv 2401.12033), here with WRF's per-tensor scale.
- ``rwp``: random weight perturbation (Li et al., RWP, nblt/RWP), the paper's cheap variant: filter-wise Gaussian
  noise with std γ·‖w_filter‖; with ``mix`` = 1 (default) only the gradient at w + ε is used (one pass per step);
  ``mix`` < 1 mixes in the gradient at w (two passes) as in RWP.
- ``sam`` (Foret et al.; davda54/sam): ε = ρ·g/‖g‖ with the global norm over all perturbed tensors.
- ``asam`` (Kwon et al.; SamsungLabs/ASAM): T_w = |w| + η, ε = ρ·T_w²·g/‖T_w·g‖.

Which tensors are perturbed: trainable tensors with ndim >= 2, except lookup tables (``nn.Embedding`` weights and
positional-embedding tables): a per-tensor norm over a 49k-row vocabulary is dominated by rows a batch never uses
but lands on the few it does, which was measured to destroy the tiny CLIP's fine-tuning. ``include`` / ``exclude``
regexes (matched with ``re.search`` against parameter names) change the set. Under LoRA only the adapters are
trainable, so only they are perturbed.

Mixed precision: norms are taken of the unscaled gradients (divided by the GradScaler's scale) and the step goes
through ``scaler.step``; set ``reg.scaler`` to the loop's GradScaler. DDP: gradients are already all-reduced when
the closure's backward returns, so every norm here is of the global gradient.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import BenchError
from bench.registry import Registry

REGULARIZERS: Registry[type] = Registry("regularizer")
PHASES = ("first_pass", "perturb", "second_pass", "restore", "optimizer_step")
_POSITION_TABLES = re.compile(r"(^|\.)(positional_embedding|position_embeddings|pos_embed)(\.weight)?$")


def register_regularizer(name: str):
    """Class decorator registering a ``Regularizer`` subclass under ``name``."""
    return REGULARIZERS.register_class(name, "name")


def list_regularizers() -> list[str]:
    """Names of all registered regularizers."""
    return REGULARIZERS.names()


def settings_class(name: str) -> type:
    """The frozen settings dataclass of regularizer ``name`` (one-line error with close matches otherwise)."""
    return REGULARIZERS.get(name, flag="--reg").Settings


def create(name: str, model: nn.Module, **settings: Any) -> Regularizer:
    """Regularizer ``name`` over ``model``'s trainable tensors, with ``settings`` validated (one-line errors)."""
    from bench.config import resolve_config

    cls = REGULARIZERS.get(name, flag="--reg")
    config = resolve_config(cls.Settings, settings, {}, source=f"--reg {name}")
    return cls(model, config)


class StepTimer:
    """Per-phase wall time of one step: ``perf_counter`` on CPU, CUDA events (synchronised at the end) on GPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[str, Any]] = []

    def mark(self, phase: str) -> None:
        """Close ``phase`` (the time since the previous mark, or since ``start``)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((phase, event))
        else:
            self.marks.append((phase, time.perf_counter()))

    def start(self) -> None:
        """Start a step."""
        self.marks = []
        self.mark("start")

    def seconds(self) -> dict[str, float]:
        """Seconds per phase of the last step (phases not run are absent)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, before), (phase, after) in zip(self.marks, self.marks[1:], strict=False):
            elapsed = before.elapsed_time(after) / 1000 if self.cuda else after - before
            out[phase] = out.get(phase, 0.0) + elapsed
        return out


def _finite_non_negative(name: str, value: float, positive: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a finite positive number" if positive else "a finite non-negative number"
        raise BenchError(f"--{name}: must be {need}, got {value}")


class Regularizer:
    """Base class: which tensors are perturbed, timing, and the plain step the variants build on."""

    name: ClassVar[str]
    Settings: ClassVar[type]
    perturbs: ClassVar[bool] = True

    def __init__(self, model: nn.Module, settings: Any) -> None:
        self.settings = settings
        self.model = model
        self.scaler: torch.amp.GradScaler | None = None
        self.steps = 0
        self.timer = StepTimer(cuda=any(p.is_cuda for p in model.parameters()))
        self.last_seconds: dict[str, float] = {}
        self.targets = self._select(model) if self.perturbs else []

    def _select(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        tables = {
            f"{module_name}.weight" if module_name else "weight"
            for module_name, module in model.named_modules()
            if isinstance(module, nn.Embedding)
        }
        include = getattr(self.settings, "include", None)
        exclude = getattr(self.settings, "exclude", None)
        # A bad regex is a one-line error naming its flag, not a re.error traceback.
        for flag, pattern in (("--reg-include", include), ("--reg-exclude", exclude)):
            try:
                re.compile(pattern or "")
            except re.error as exc:
                raise BenchError(f"{flag}: {pattern!r} is not a valid regular expression ({exc})") from None
        chosen = []
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            if include is not None:
                eligible = re.search(include, name) is not None
            else:
                eligible = parameter.ndim >= 2 and name not in tables and not _POSITION_TABLES.search(name)
            if eligible and exclude is not None and re.search(exclude, name):
                eligible = False
            if eligible:
                chosen.append((name, parameter))
        if include is not None and not chosen:
            raise BenchError(f"--reg-include: pattern {include!r} matches no trainable parameter")
        if not chosen:
            raise BenchError(f"--reg {self.name}: no trainable tensor is eligible for perturbation")
        return chosen

    def describe(self) -> dict[str, Any]:
        """The regularizer and its settings, for result records."""
        return {"name": self.name, **{k: v for k, v in dataclasses.asdict(self.settings).items() if v is not None}}

    def _unscaled(self, tensor: torch.Tensor) -> torch.Tensor:
        grad = tensor.float()
        return grad / self.scaler.get_scale() if self.scaler is not None and self.scaler.is_enabled() else grad

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.timer.mark("optimizer_step")

    def step(self, closure: Callable[[], float], optimizer: torch.optim.Optimizer) -> float:
        """One training step; returns the loss at the unperturbed weights (see each variant)."""
        # Decided per step, not at creation: prepare_run creates the regularizer before moving the model to CUDA.
        self.timer.cuda = any(p.is_cuda for p in self.model.parameters())
        self.timer.start()
        loss = self._step(closure, optimizer)
        self.steps += 1
        self.last_seconds = self.timer.seconds()
        return loss

    def _step(self, closure, optimizer) -> float:
        loss = closure()
        self.timer.mark("first_pass")
        self._optimizer_step(optimizer)
        return loss

    def _perturbed_step(self, closure, optimizer, offsets: list[torch.Tensor | None], restore: str = "before_step"):
        """Add ``offsets`` to the target tensors, run ``closure`` there, restore, step; returns the closure's loss.

        ``before_step``: the saved weights are copied back (exactly w) and the optimizer steps from w with the
        gradient taken at w + e. ``after_step`` (AWP's order): the optimizer steps from w + e, then e is removed.
        """
        pairs = [
            (p, offset.to(p.dtype)) for (_, p), offset in zip(self.targets, offsets, strict=True) if offset is not None
        ]
        params, deltas = [p for p, _ in pairs], [d for _, d in pairs]
        with torch.no_grad():
            saved = [p.detach().clone() for p in params] if restore == "before_step" else []
            if params:
                torch._foreach_add_(params, deltas)
        self.timer.mark("perturb")
        loss = closure()
        self.timer.mark("second_pass")
        if restore == "before_step":
            with torch.no_grad():
                if params:
                    torch._foreach_copy_(params, saved)
            self.timer.mark("restore")
            self._optimizer_step(optimizer)
        else:
            self._optimizer_step(optimizer)
            with torch.no_grad():
                if params:
                    torch._foreach_sub_(params, deltas)
            self.timer.mark("restore")
        return loss

    def scaled_directions(self, directions: list[torch.Tensor | None], gamma: float) -> list[torch.Tensor | None]:
        """γ·‖w_l‖·d_l/(‖d_l‖ + 1e-12) per target tensor (None where d_l is None), with fused per-list kernels.

        A non-finite direction (an overflowed fp16 gradient) perturbs nothing: the scaler skips that step anyway.
        """
        present = [i for i, d in enumerate(directions) if d is not None]
        offsets: list[torch.Tensor | None] = [None] * len(directions)
        if not present:
            return offsets
        params = [self.targets[i][1].detach() for i in present]
        found = [directions[i] for i in present]
        weight_norms = torch.stack(torch._foreach_norm(params)).float()
        direction_norms = torch.stack(torch._foreach_norm(found)).float()
        if not bool(torch.isfinite(direction_norms).all()):
            return offsets
        scales = (gamma * weight_norms / (direction_norms + 1e-12)).tolist()
        for i, offset in zip(present, torch._foreach_mul(found, scales), strict=True):
            offsets[i] = offset
        return offsets


@register_regularizer("none")
class NoRegularizer(Regularizer):
    """Plain training: closure, then the optimizer step."""

    perturbs = False

    @dataclass(frozen=True)
    class Settings:
        """No settings."""

    def describe(self) -> dict[str, Any]:
        return {"name": "none"}


@register_regularizer("wrf")
class WRF(Regularizer):
    """WRF: adversarial per-tensor weight perturbation along the gradient, scaled by the weight norm."""

    @dataclass(frozen=True)
    class Settings:
        """``gamma``: relative perturbation size (paper's best 1e-3); ``warmup_steps``: γ ramps linearly from 0;
        ``restore``: ``before_step`` (default, exact copy back) or ``after_step`` (AWP's order)."""

        gamma: float = 1e-3
        warmup_steps: int = 0
        restore: str = "before_step"
        include: str | None = None
        exclude: str | None = None

        def __post_init__(self) -> None:
            _finite_non_negative("gamma", self.gamma)
            if self.warmup_steps < 0:
                raise BenchError(f"--warmup-steps: must be >= 0, got {self.warmup_steps}")
            if self.restore not in ("before_step", "after_step"):
                raise BenchError(f"--restore: must be before_step or after_step, got {self.restore!r}")

    def gamma_now(self) -> float:
        """γ at this step (after warm-up)."""
        warmup = self.settings.warmup_steps
        return self.settings.gamma * (min(1.0, (self.steps + 1) / warmup) if warmup else 1.0)

    def _step(self, closure, optimizer) -> float:
        gamma = self.gamma_now()
        if gamma == 0:
            # Bit-identical to plain training: no second pass, no random draws (e.g. dropout masks) consumed.
            return super()._step(closure, optimizer)
        loss = closure()
        self.timer.mark("first_pass")
        with torch.no_grad():
            grads = [None if p.grad is None else self._unscaled(p.grad) for _, p in self.targets]
            offsets = self.scaled_directions(grads, gamma)
        self._perturbed_step(closure, optimizer, offsets, self.settings.restore)
        return loss


@register_regularizer("wrf-momentum")
class MomentumWRF(Regularizer):
    """WRF with the optimizer's first moment as the ascent direction: one forward and backward per step."""

    @dataclass(frozen=True)
    class Settings:
        """``gamma``: relative perturbation size, as in ``wrf``."""

        gamma: float = 1e-3
        include: str | None = None
        exclude: str | None = None

        def __post_init__(self) -> None:
            _finite_non_negative("gamma", self.gamma)

    def _step(self, closure, optimizer) -> float:
        moments = []
        for _, parameter in self.targets:
            state = optimizer.state.get(parameter, {})
            moments.append(state.get("exp_avg", state.get("momentum_buffer")))
        # The first step has no moment yet: a plain step.
        with torch.no_grad():
            offsets = (
                self.scaled_directions(moments, self.settings.gamma) if self.settings.gamma else [None] * len(moments)
            )
        if all(offset is None for offset in offsets):
            return super()._step(closure, optimizer)
        # The one forward/backward runs at w + e (timed as "second_pass": the pass at perturbed weights).
        return self._perturbed_step(closure, optimizer, offsets)


@register_regularizer("rwp")
class RandomWeightPerturbation(Regularizer):
    """RWP: filter-wise Gaussian weight noise; the paper's cheap random-perturbation variant."""

    @dataclass(frozen=True)
    class Settings:
        """``gamma``: noise std relative to each filter's norm; ``mix``: weight of the gradient at w + ε (RWP's
        α; 1 = one pass per step)."""

        gamma: float = 1e-3
        mix: float = 1.0
        include: str | None = None
        exclude: str | None = None

        def __post_init__(self) -> None:
            _finite_non_negative("gamma", self.gamma, positive=True)
            if not (math.isfinite(self.mix) and 0 < self.mix <= 1):
                raise BenchError(f"--mix: must be in (0, 1], got {self.mix}")

    def _noise(self, parameter: torch.Tensor) -> torch.Tensor:
        weights = parameter.detach().float()
        if weights.ndim == 0:  # a scalar picked by --reg-include (e.g. a temperature): its own filter
            return torch.randn_like(weights) * self.settings.gamma * weights.abs()
        filter_norms = torch.linalg.vector_norm(weights.reshape(len(weights), -1), dim=1)
        shape = (len(weights),) + (1,) * (weights.ndim - 1)
        return torch.randn_like(weights) * (self.settings.gamma * filter_norms).reshape(shape)

    def _step(self, closure, optimizer) -> float:
        mix = self.settings.mix
        clean: list[torch.Tensor | None] | None = None
        # RWP mixes the whole gradient, so every trainable tensor (not only the perturbed ones) gets the mix.
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if mix < 1:
            closure()
            clean = [None if p.grad is None else p.grad.detach().clone() for p in trainable]
        self.timer.mark("first_pass")
        offsets = [self._noise(parameter) for _, parameter in self.targets]
        saved = [(p, p.detach().clone()) for _, p in self.targets]
        with torch.no_grad():
            for (_, parameter), offset in zip(self.targets, offsets, strict=True):
                parameter.add_(offset.to(parameter.dtype))
        self.timer.mark("perturb")
        loss = closure()
        self.timer.mark("second_pass")
        with torch.no_grad():
            for parameter, original in saved:
                parameter.copy_(original)
            if clean is not None:
                for parameter, gradient in zip(trainable, clean, strict=True):
                    if parameter.grad is not None and gradient is not None:
                        parameter.grad.mul_(mix).add_(gradient, alpha=1 - mix)
        self.timer.mark("restore")
        self._optimizer_step(optimizer)
        return loss


class _SharpnessAware(Regularizer):
    """SAM and ASAM: ε from the global norm of the (optionally |w|-scaled) gradient; restore before the step."""

    adaptive: ClassVar[bool]

    def _step(self, closure, optimizer) -> float:
        loss = closure()
        self.timer.mark("first_pass")
        settings = self.settings
        with torch.no_grad():
            pieces = []
            for _, parameter in self.targets:
                if parameter.grad is None:
                    pieces.append(None)
                    continue
                grad = self._unscaled(parameter.grad)
                scale = parameter.detach().float().abs() + settings.eta if self.adaptive else None
                pieces.append((grad, scale))
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g * s if s is not None else g) for g, s in filter(None, pieces)])
            )
            if not bool(torch.isfinite(norm)):
                # An overflowed fp16 step (inf/NaN gradients): ε would write NaN into the weights and the second
                # pass's loss would be NaN (a "non-finite loss" stop); the scaler skips this step anyway.
                pieces = [None] * len(pieces)
            offsets = [
                None
                if piece is None
                else settings.rho * (piece[1] ** 2 if self.adaptive else 1) * piece[0] / (norm + 1e-12)
                for piece in pieces
            ]
        self._perturbed_step(closure, optimizer, offsets)
        return loss


@register_regularizer("sam")
class SAM(_SharpnessAware):
    """SAM: ε = ρ·g/‖g‖ over all perturbed tensors jointly."""

    adaptive = False

    @dataclass(frozen=True)
    class Settings:
        """``rho``: the neighbourhood radius (SAM's default 0.05)."""

        rho: float = 0.05
        include: str | None = None
        exclude: str | None = None

        def __post_init__(self) -> None:
            _finite_non_negative("rho", self.rho, positive=True)


@register_regularizer("asam")
class ASAM(_SharpnessAware):
    """ASAM: adaptive SAM, ε = ρ·T_w²·g/‖T_w·g‖ with T_w = |w| + η."""

    adaptive = True

    @dataclass(frozen=True)
    class Settings:
        """``rho``: radius (ASAM's default 0.5); ``eta``: the offset in T_w (0.01)."""

        rho: float = 0.5
        eta: float = 0.01
        include: str | None = None
        exclude: str | None = None

        def __post_init__(self) -> None:
            _finite_non_negative("rho", self.rho, positive=True)
            _finite_non_negative("eta", self.eta)
