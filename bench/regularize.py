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

    def add(cls: type) -> type:
        cls.name = name
        REGULARIZERS.add(name, cls)
        return cls

    return add


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
        saved = []
        with torch.no_grad():
            for (_, parameter), offset in zip(self.targets, offsets, strict=True):
                if offset is not None:
                    saved.append((parameter, parameter.detach().clone(), offset))
                    parameter.add_(offset.to(parameter.dtype))
        self.timer.mark("perturb")
        loss = closure()
        self.timer.mark("second_pass")
        if restore == "before_step":
            with torch.no_grad():
                for parameter, original, _ in saved:
                    parameter.copy_(original)
            self.timer.mark("restore")
            self._optimizer_step(optimizer)
        else:
            self._optimizer_step(optimizer)
            with torch.no_grad():
                for parameter, _, offset in saved:
                    parameter.sub_(offset.to(parameter.dtype))
            self.timer.mark("restore")
        return loss


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
        offsets = []
        with torch.no_grad():
            for _, parameter in self.targets:
                if parameter.grad is None:
                    offsets.append(None)
                    continue
                grad = self._unscaled(parameter.grad)
                if not bool(torch.isfinite(grad).all()):
                    offsets.append(None)  # an overflowed fp16 step: the scaler skips it anyway
                    continue
                scale = gamma * torch.linalg.vector_norm(parameter.float()) / (torch.linalg.vector_norm(grad) + 1e-12)
                offsets.append(grad * scale)
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
        gamma = self.settings.gamma
        offsets = []
        with torch.no_grad():
            for _, parameter in self.targets:
                state = optimizer.state.get(parameter, {})
                moment = state.get("exp_avg", state.get("momentum_buffer"))
                if gamma == 0 or moment is None:
                    offsets.append(None)  # the first step has no moment yet: a plain step
                    continue
                moment = moment.float()
                scale = gamma * torch.linalg.vector_norm(parameter.float()) / (torch.linalg.vector_norm(moment) + 1e-12)
                offsets.append(moment * scale)
        self.timer.mark("first_pass")
        if all(offset is None for offset in offsets):
            loss = closure()
            self.timer.mark("second_pass")
            self._optimizer_step(optimizer)
            return loss
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
        filter_norms = torch.linalg.vector_norm(weights.reshape(len(weights), -1), dim=1)
        shape = (len(weights),) + (1,) * (weights.ndim - 1)
        return torch.randn_like(weights) * (self.settings.gamma * filter_norms).reshape(shape)

    def _step(self, closure, optimizer) -> float:
        mix = self.settings.mix
        clean: list[torch.Tensor | None] | None = None
        if mix < 1:
            closure()
            clean = [None if p.grad is None else p.grad.detach().clone() for _, p in self.targets]
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
                for (_, parameter), gradient in zip(self.targets, clean, strict=True):
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
