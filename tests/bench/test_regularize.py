"""Weight-perturbation regularizers (bench.regularize): WRF and its family, checked property by property.

Most properties run on a toy model holding every kind of tensor the eligibility rules tell apart: an
``nn.Embedding`` table, a ``positional_embedding`` table, a stack of Linear layers (weights and 1-D biases), a
frozen Linear and a free 1-D bias. The loss closure records the weights it ran at and the gradients it left, so
each test sees the perturbation from inside the step.
"""

import copy
import math
import time
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bench.errors import BenchError
from bench.regularize import PHASES, StepTimer, create, list_regularizers
from bench.train import RunConfig, build_method
from methods import list_methods
from tests.methods.test_registry import method_inputs

PROPERTY = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and two BLAS threads next to any other busy process on two
    cores thrash (measured: one whole-method step went from 0.4 s to 24 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PERTURBING = [name for name in list_regularizers() if name != "none"]
# Settings large enough that every perturbation is far above float rounding.
STRONG = {
    "wrf": {"gamma": 0.1},
    "wrf-momentum": {"gamma": 0.1},
    "rwp": {"gamma": 0.1},
    "sam": {"rho": 0.3},
    "asam": {"rho": 0.5, "eta": 0.01},
}


class Toy(nn.Module):
    """Token ids -> 3 outputs: embedding + positional table, Linear/Tanh stack, dropout, frozen Linear, 1-D bias."""

    def __init__(self, vocab: int, dim: int, widths: tuple[int, ...], seq: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.positional_embedding = nn.Parameter(0.5 * torch.randn(seq, dim))
        layers: list[nn.Module] = []
        width = dim
        for out in widths:
            layers += [nn.Linear(width, out), nn.Tanh()]
            width = out
        layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.frozen = nn.Linear(width, 3)
        self.frozen.requires_grad_(False)
        self.bias = nn.Parameter(0.5 * torch.randn(3))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.frozen(self.body(x).mean(1)) + self.bias


@st.composite
def shapes(draw) -> dict:
    """Sizes (and the seed) of one toy problem."""
    return {
        "seed": draw(st.integers(0, 2**16)),
        "vocab": draw(st.integers(2, 12)),
        "dim": draw(st.integers(1, 6)),
        "widths": tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))),
        "batch": draw(st.integers(1, 4)),
        "seq": draw(st.integers(1, 4)),
    }


def toy(seed, vocab, dim, widths, batch, seq, dtype=torch.float32, dropout=0.0):
    """The toy model, a batch of token ids and regression targets, all from ``seed``."""
    torch.manual_seed(seed)
    model = Toy(vocab, dim, widths, seq, dropout).to(dtype)
    return model, torch.randint(vocab, (batch, seq)), torch.randn(batch, 3, dtype=dtype)


def eligible(shape: dict) -> set[str]:
    """What the default rules must perturb in ``Toy``: exactly the Linear stack's weights."""
    return {f"body.{2 * i}.weight" for i in range(len(shape["widths"]))}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_stepped_like_the_base_optimizer(model: nn.Module, grads: dict[str, torch.Tensor], reference) -> None:
    """``model`` equals ``reference``'s (model, optimizer) after one plain optimizer step with ``grads``."""
    ref_model, ref_optimizer = reference
    for name, parameter in ref_model.named_parameters():
        if parameter.requires_grad:
            parameter.grad = grads[name]
    ref_optimizer.step()
    for name, value in snapshot(ref_model).items():
        assert torch.equal(model.get_parameter(name), value), name


def norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor.double()))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum()) / (norm(a) * norm(b))


@dataclass
class Call:
    """One closure call: the weights it ran at, the gradients it left and its loss."""

    params: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    loss: float


class Recorder:
    """A loss closure (zero grads, forward, backward, return the loss) that records every call."""

    def __init__(self, model, optimizer, tokens, target, scaler=None, after_backward=None) -> None:
        self.model, self.optimizer, self.tokens, self.target = model, optimizer, tokens, target
        self.scaler, self.after_backward = scaler, after_backward
        self.calls: list[Call] = []

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = ((self.model(self.tokens) - self.target) ** 2).mean()
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.after_backward is not None:
            self.after_backward(self.model)
        grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        self.calls.append(Call(snapshot(self.model), grads, float(loss.detach())))
        return float(loss.detach())


def watch_optimizer(optimizer, model) -> list[Call]:
    """Record the weights and gradients the optimizer steps from (a step pre-hook)."""
    seen: list[Call] = []

    def hook(opt, args, kwargs):
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        seen.append(Call(snapshot(model), grads, math.nan))

    optimizer.register_step_pre_hook(hook)
    return seen


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(trainable(model), lr=0.1, momentum=0.9, weight_decay=0.3)
    return torch.optim.AdamW(trainable(model), lr=0.05, weight_decay=0.5)


def plain_steps(model, optimizer, recorder, steps: int) -> None:
    """``steps`` unregularized steps (so the optimizer has state)."""
    for _ in range(steps):
        recorder()
        optimizer.step()


# --- 1, 2: WRF's per-tensor perturbation, and what it never touches ----------------------------------------------


@PROPERTY
@given(shape=shapes(), gamma=st.floats(1e-4, 0.5), restore=st.sampled_from(["before_step", "after_step"]))
def test_wrf_moves_each_eligible_tensor_by_gamma_times_its_norm_along_its_own_gradient(shape, gamma, restore):
    model, tokens, target = toy(**shape, dtype=torch.float64)
    optimizer = torch.optim.SGD(trainable(model), lr=0.1, momentum=0.9)
    regularizer = create("wrf", model, gamma=gamma, restore=restore)
    closure = Recorder(model, optimizer, tokens, target)
    regularizer.step(closure, optimizer)
    assert len(closure.calls) == 2
    first, second = closure.calls
    assert {name for name, _ in regularizer.targets} == eligible(shape)
    for name in eligible(shape):
        weight, gradient = first.params[name], first.grads[name]
        offset = second.params[name] - weight
        assert norm(offset) == pytest.approx(gamma * norm(weight), rel=1e-4), name
        assert cosine(offset, gradient) == pytest.approx(1.0, abs=1e-6), name


@PROPERTY
@given(shape=shapes(), name=st.sampled_from(PERTURBING))
def test_ineligible_tensors_never_change_during_the_perturbation(shape, name):
    model, tokens, target = toy(**shape)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.01)
    regularizer = create(name, model, **STRONG[name])
    closure = Recorder(model, optimizer, tokens, target)
    if name == "wrf-momentum":
        regularizer.step(closure, optimizer)  # the first step is plain: it builds the moment to perturb along
    before = snapshot(model)
    start = len(closure.calls)
    regularizer.step(closure, optimizer)
    untouched = set(before) - eligible(shape)
    assert {"embed.weight", "positional_embedding", "bias", "body.0.bias", "frozen.weight"} <= untouched
    perturbed_somewhere = False
    for call in closure.calls[start:]:
        for tensor in untouched:
            assert torch.equal(call.params[tensor], before[tensor]), tensor
        perturbed_somewhere |= any(not torch.equal(call.params[t], before[t]) for t in eligible(shape))
    assert perturbed_somewhere  # the step did perturb something, so the check above means something


# --- 3: what the optimizer steps from, under both restore orders ----------------------------------------------


@PROPERTY
@given(
    shape=shapes(),
    gamma=st.floats(0.05, 0.5),
    restore=st.sampled_from(["before_step", "after_step"]),
    kind=st.sampled_from(["sgd", "adamw"]),
)
def test_wrf_steps_the_base_optimizer_with_the_gradient_at_the_perturbed_weights(shape, gamma, restore, kind):
    model, tokens, target = toy(**shape)
    optimizer = make_optimizer(kind, model)
    closure = Recorder(model, optimizer, tokens, target)
    plain_steps(model, optimizer, closure, 2)
    regularizer = create("wrf", model, gamma=gamma, restore=restore)
    reference = copy.deepcopy((model, optimizer))
    regularizer.step(closure, optimizer)
    first, second = closure.calls[-2:]
    offsets = {name: second.params[name] - first.params[name] for name in eligible(shape)}

    def stepped(from_perturbed: bool) -> dict[str, torch.Tensor]:
        ref_model, ref_optimizer = copy.deepcopy(reference)
        parameters = dict(ref_model.named_parameters())
        with torch.no_grad():
            if from_perturbed:
                for name in offsets:
                    parameters[name].copy_(second.params[name])
            for name, parameter in parameters.items():
                if parameter.requires_grad:
                    parameter.grad = second.grads[name].clone()
        ref_optimizer.step()
        with torch.no_grad():
            if from_perturbed:
                for name, offset in offsets.items():
                    parameters[name].sub_(offset)
        return snapshot(ref_model)

    after = snapshot(model)
    expected, other = stepped(restore == "after_step"), stepped(restore != "after_step")
    for name, value in after.items():
        if restore == "before_step":
            assert torch.equal(value, expected[name]), name
        else:
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    # The two orders differ by weight decay acting on e (lr·wd·e): the comparison above tells them apart.
    assert max(float((after[n] - other[n]).abs().max()) for n in offsets) > 1e-5


# --- 4, 5: γ = 0 is plain training; the returned loss is the unperturbed one -----------------------------------


@PROPERTY
@given(shape=shapes(), steps=st.integers(1, 4), name=st.sampled_from(["wrf", "wrf-momentum"]))
def test_gamma_zero_is_plain_training_bit_for_bit_with_dropout(shape, steps, name):
    runs = []
    for regularizer_name, options in (("none", {}), (name, {"gamma": 0.0})):
        model, tokens, target = toy(**shape, dropout=0.5)
        model.train()
        optimizer = torch.optim.AdamW(trainable(model), lr=0.05)
        regularizer = create(regularizer_name, model, **options)
        closure = Recorder(model, optimizer, tokens, target)
        torch.manual_seed(1234)
        losses = [regularizer.step(closure, optimizer) for _ in range(steps)]
        runs.append((snapshot(model), losses, torch.get_rng_state(), len(closure.calls)))
    (plain, plain_losses, plain_rng, plain_calls), (zero, zero_losses, zero_rng, zero_calls) = runs
    assert plain_calls == zero_calls == steps
    assert zero_losses == plain_losses
    assert torch.equal(zero_rng, plain_rng)  # no extra random draws (dropout masks) consumed
    for tensor in plain:
        assert torch.equal(zero[tensor], plain[tensor]), tensor


@PROPERTY
@given(shape=shapes(), name=st.sampled_from(["wrf", "sam", "asam"]))
def test_step_returns_the_loss_at_the_unperturbed_weights(shape, name):
    model, tokens, target = toy(**shape)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.01)
    closure = Recorder(model, optimizer, tokens, target)
    plain_steps(model, optimizer, closure, 1)
    regularizer = create(name, model, **STRONG[name])
    for _ in range(2):
        start = len(closure.calls)
        loss = regularizer.step(closure, optimizer)
        first, second = closure.calls[start:]
        assert loss == first.loss
        assert loss != second.loss  # the perturbation is large: the two passes' losses tell them apart


def test_step_returns_the_first_pass_loss_not_the_second():
    """A deterministic witness for the property above: the two passes give clearly different losses."""
    model, tokens, target = toy(seed=3, vocab=5, dim=4, widths=(4, 4), batch=4, seq=3)
    optimizer = torch.optim.SGD(trainable(model), lr=0.0)
    closure = Recorder(model, optimizer, tokens, target)
    loss = create("wrf", model, gamma=0.3).step(closure, optimizer)
    assert loss == closure.calls[0].loss and closure.calls[1].loss > loss * 1.001


# --- 6: LoRA --------------------------------------------------------------------------------------------------


def test_under_lora_wrf_perturbs_and_changes_exactly_the_adapters():
    torch.manual_seed(0)
    method = build_method(RunConfig(method="combiner", pretrained="none", lora=True))
    method.train()
    regularizer = create("wrf", method, gamma=0.05)
    lora = {name for name, _ in method.named_parameters() if "lora_" in name}
    assert lora and {name for name, _ in regularizer.targets} == lora
    reference, text, target = method_inputs(method)
    optimizer = torch.optim.AdamW(trainable(method), lr=1e-2)
    seen = []

    def closure() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(method.losses(reference, text, target).values())
        loss.backward()
        seen.append(snapshot(method))
        return float(loss.detach())

    for _ in range(2):  # lora_B starts at zero, so WRF's first perturbation is zero; the second is not
        before = {name: value.clone() for name, value in method.state_dict().items()}
        start = len(seen)
        assert math.isfinite(regularizer.step(closure, optimizer))
        changed = {name for name, value in method.state_dict().items() if not torch.equal(value, before[name])}
        assert changed and changed <= lora
        moved = {name for name, value in seen[start + 1].items() if not torch.equal(value, before[name])}
        assert moved <= lora
    assert moved  # the second step's perturbation moved some adapters


# --- 7: which tensors are perturbed ---------------------------------------------------------------------------


class Zoo(nn.Module):
    """Every kind of tensor the eligibility rules tell apart, in nested modules."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Module()
        self.enc.tok = nn.Embedding(7, 4)
        self.enc.position_embeddings = nn.Embedding(5, 4)
        self.enc.positional_embedding = nn.Parameter(torch.randn(5, 4))
        self.enc.pos_embed = nn.Parameter(torch.randn(1, 5, 4))
        self.enc.proj = nn.Linear(4, 4)
        self.conv = nn.Conv1d(4, 2, 3)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.tensor(1.0))


ZOO_DEFAULT = {"enc.proj.weight", "conv.weight", "head.weight"}


@pytest.mark.parametrize("name", PERTURBING)
def test_default_set_is_trainable_weights_of_two_or_more_dims_without_lookup_tables(name):
    targets = {n for n, _ in create(name, Zoo()).targets}
    assert targets == ZOO_DEFAULT


@pytest.mark.parametrize("name", PERTURBING)
def test_include_replaces_the_set_and_exclude_removes_from_it(name):
    model = Zoo()
    assert {n for n, _ in create(name, model, include=r"bias$").targets} == {"enc.proj.bias", "conv.bias", "head.bias"}
    assert {n for n, _ in create(name, model, include=r"^enc\.tok").targets} == {"enc.tok.weight"}
    assert {n for n, _ in create(name, model, include="scale").targets} == {"scale"}
    assert {n for n, _ in create(name, model, exclude="head").targets} == ZOO_DEFAULT - {"head.weight"}
    both = create(name, model, include=r"^(head|conv)\.", exclude="bias")
    assert {n for n, _ in both.targets} == {"head.weight", "conv.weight"}
    assert {n for n, _ in create(name, model, include=".").targets} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


@pytest.mark.parametrize("name", PERTURBING)
def test_include_matching_nothing_trainable_is_a_one_line_error(name):
    for pattern in ("no_such_tensor", r"^frozen\."):  # frozen tensors are never chosen, even by name
        with pytest.raises(BenchError, match="--reg-include") as error:
            create(name, Zoo(), include=pattern)
        assert "\n" not in str(error.value)


def test_an_invalid_include_or_exclude_regex_is_a_one_line_error():
    with pytest.raises(BenchError, match="--reg-include"):
        create("wrf", Zoo(), include="(unclosed")
    with pytest.raises(BenchError, match="--reg-exclude"):
        create("sam", Zoo(), exclude="[")


def test_a_model_with_nothing_eligible_is_an_error_but_none_accepts_it():
    tables = nn.Module()
    tables.tok = nn.Embedding(4, 3)
    tables.positional_embedding = nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(BenchError, match="--reg wrf: no trainable tensor is eligible"):
        create("wrf", tables)
    assert create("none", tables).targets == []


# --- 8: SAM and ASAM ------------------------------------------------------------------------------------------


@PROPERTY
@given(shape=shapes(), rho=st.floats(1e-3, 1.0), eta=st.floats(0.0, 0.1), adaptive=st.booleans())
def test_sam_and_asam_perturb_by_their_formulas(shape, rho, eta, adaptive):
    model, tokens, target = toy(**shape, dtype=torch.float64)
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    regularizer = create("asam", model, rho=rho, eta=eta) if adaptive else create("sam", model, rho=rho)
    closure = Recorder(model, optimizer, tokens, target)
    regularizer.step(closure, optimizer)
    first, second = closure.calls
    names = sorted(eligible(shape))
    offsets = {n: second.params[n] - first.params[n] for n in names}
    grads = {n: first.grads[n] for n in names}
    if adaptive:
        scales = {n: first.params[n].abs() + eta for n in names}
        joint = math.sqrt(sum(norm(scales[n] * grads[n]) ** 2 for n in names))
        expected = {n: rho * scales[n] ** 2 * grads[n] / joint for n in names}
    else:
        joint = math.sqrt(sum(norm(grads[n]) ** 2 for n in names))
        expected = {n: rho * grads[n] / joint for n in names}
        # SAM's radius is global: the joint norm over all perturbed tensors is rho, not each tensor's.
        assert math.sqrt(sum(norm(offsets[n]) ** 2 for n in names)) == pytest.approx(rho, rel=1e-5)
    for n in names:
        torch.testing.assert_close(offsets[n], expected[n], rtol=1e-5, atol=1e-7 * rho, msg=n)


# --- 9: RWP ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(shape=shapes(), gamma=st.floats(1e-3, 0.3), steps=st.integers(1, 3))
def test_rwp_with_mix_one_takes_one_pass_at_noisy_weights_and_steps_from_the_clean_ones(shape, gamma, steps):
    model, tokens, target = toy(**shape)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.05, weight_decay=0.5)
    regularizer = create("rwp", model, gamma=gamma)
    closure = Recorder(model, optimizer, tokens, target)
    stepped_from = watch_optimizer(optimizer, model)
    for step in range(steps):
        before = snapshot(model)
        reference = copy.deepcopy((model, optimizer))
        regularizer.step(closure, optimizer)
        assert len(closure.calls) == step + 1
        noisy = closure.calls[-1]
        for name in eligible(shape):
            assert not torch.equal(noisy.params[name], before[name]), name
        for name in set(before) - eligible(shape):
            assert torch.equal(noisy.params[name], before[name]), name
        for name, value in stepped_from[-1].params.items():  # the noise is gone before the optimizer steps
            assert torch.equal(value, before[name]), name
        assert_stepped_like_the_base_optimizer(model, noisy.grads, reference=reference)


@PROPERTY
@given(shape=shapes(), mix=st.floats(0.1, 0.9))
def test_rwp_with_mix_below_one_steps_with_the_mixed_gradient(shape, mix):
    model, tokens, target = toy(**shape)
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    regularizer = create("rwp", model, gamma=0.1, mix=mix)
    closure = Recorder(model, optimizer, tokens, target)
    stepped_from = watch_optimizer(optimizer, model)
    before = snapshot(model)
    regularizer.step(closure, optimizer)
    assert len(closure.calls) == 2
    clean, noisy = closure.calls
    for name, value in clean.params.items():
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(noisy.params[n], before[n]) for n in eligible(shape))
    (seen,) = stepped_from
    for name, value in seen.params.items():
        assert torch.equal(value, before[name]), name
    # RWP mixes the whole gradient: every trainable tensor, not only the perturbed ones.
    assert set(seen.grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, gradient in seen.grads.items():
        expected = mix * noisy.grads[name] + (1 - mix) * clean.grads[name]
        torch.testing.assert_close(gradient, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_rwp_noise_has_filter_wise_std_gamma_times_the_filter_norm():
    torch.manual_seed(0)
    model = nn.Module()
    model.linear = nn.Linear(4000, 3, bias=False)
    model.conv = nn.Conv2d(64, 3, 7, bias=False)
    with torch.no_grad():  # filters of very different norms: a per-tensor std would fail this test
        model.linear.weight.mul_(torch.tensor([[0.1], [1.0], [10.0]]))
        model.conv.weight.mul_(torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    gamma = 0.05
    regularizer = create("rwp", model, gamma=gamma)
    noises = []

    def closure() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = (model.linear.weight**2).sum() + (model.conv.weight**2).sum()
        loss.backward()
        noises.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return float(loss.detach())

    for _ in range(2):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        regularizer.step(closure, optimizer)
        for name, weight in before.items():
            noise = (noises[-1][name] - weight).reshape(3, -1)
            filter_norms = torch.linalg.vector_norm(weight.reshape(3, -1), dim=1)
            ratio = noise.std(dim=1) / (gamma * filter_norms)
            assert torch.all((ratio - 1).abs() < 0.1), (name, ratio)
            assert torch.all(noise.mean(dim=1).abs() < 0.1 * noise.std(dim=1)), name
    assert not torch.equal(noises[0]["linear.weight"], noises[1]["linear.weight"])  # fresh noise every step


def test_rwp_handles_one_and_zero_dimensional_tensors_picked_by_include():
    torch.manual_seed(0)
    model = Zoo()
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    regularizer = create("rwp", model, gamma=0.1, include=r"^(scale|head\.bias|head\.weight)$")
    seen = []

    def closure() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = (model.head(torch.ones(2, 4)) * model.scale).pow(2).sum()
        loss.backward()
        seen.append(snapshot(model))
        return float(loss.detach())

    before = snapshot(model)
    assert math.isfinite(regularizer.step(closure, optimizer))
    for name in ("scale", "head.bias", "head.weight"):
        assert not torch.equal(seen[0][name], before[name]) and torch.isfinite(seen[0][name]).all(), name


# --- 10: momentum WRF -----------------------------------------------------------------------------------------


@PROPERTY
@given(shape=shapes(), gamma=st.floats(1e-3, 0.5), kind=st.sampled_from(["sgd", "adamw"]), steps=st.integers(2, 4))
def test_wrf_momentum_takes_one_pass_per_step_along_the_optimizer_moment(shape, gamma, kind, steps):
    model, tokens, target = toy(**shape, dtype=torch.float64)
    optimizer = make_optimizer(kind, model)
    moment_key = "exp_avg" if kind == "adamw" else "momentum_buffer"
    regularizer = create("wrf-momentum", model, gamma=gamma)
    closure = Recorder(model, optimizer, tokens, target)

    # First step: no moment yet, so one pass and exactly a plain step.
    ref_model, ref_optimizer = copy.deepcopy((model, optimizer))
    ref_closure = Recorder(ref_model, ref_optimizer, tokens, target)
    regularizer.step(closure, optimizer)
    ref_closure()
    ref_optimizer.step()
    assert len(closure.calls) == 1
    for name, value in snapshot(ref_model).items():
        assert torch.equal(model.get_parameter(name), value), name

    parameters = dict(model.named_parameters())
    for step in range(1, steps):
        before = snapshot(model)
        moments = {n: optimizer.state[parameters[n]][moment_key].clone() for n in eligible(shape)}
        reference = copy.deepcopy((model, optimizer))
        regularizer.step(closure, optimizer)
        assert len(closure.calls) == step + 1  # ONE forward and backward per step
        perturbed = closure.calls[-1]
        for name in eligible(shape):
            offset = perturbed.params[name] - before[name]
            assert norm(offset) == pytest.approx(gamma * norm(before[name]), rel=1e-4), name
            assert cosine(offset, moments[name]) == pytest.approx(1.0, abs=1e-6), name
        for name in set(before) - eligible(shape):
            assert torch.equal(perturbed.params[name], before[name]), name
        # The step is from w with the gradient taken at w + e.
        assert_stepped_like_the_base_optimizer(model, perturbed.grads, reference=reference)


# --- 11: bad settings -----------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("wfr", {}, "unknown regularizer 'wfr'; did you mean wrf"),
    ("sma", {}, "did you mean sam"),
    ("wrf", {"gamma": -0.1}, "--gamma"),
    ("wrf", {"gamma": math.nan}, "--gamma"),
    ("wrf", {"gamma": math.inf}, "--gamma"),
    ("wrf-momentum", {"gamma": -1.0}, "--gamma"),
    ("wrf-momentum", {"gamma": math.nan}, "--gamma"),
    ("rwp", {"gamma": 0.0}, "--gamma"),
    ("rwp", {"gamma": math.inf}, "--gamma"),
    ("rwp", {"mix": 0.0}, "--mix"),
    ("rwp", {"mix": 1.5}, "--mix"),
    ("rwp", {"mix": math.nan}, "--mix"),
    ("sam", {"rho": 0.0}, "--rho"),
    ("sam", {"rho": math.nan}, "--rho"),
    ("asam", {"rho": 0.0}, "--rho"),
    ("asam", {"eta": -0.01}, "--eta"),
    ("sam", {"eta": 0.1}, "unknown key 'eta'"),
    ("none", {"gamma": 0.1}, "unknown key 'gamma'"),
    ("wrf", {"gama": 0.1}, "unknown key 'gama'; did you mean 'gamma'"),
    ("wrf", {"restore": "sometimes"}, "--restore"),
    ("wrf", {"warmup_steps": -1}, "--warmup-steps"),
    ("wrf", {"gamma": "big"}, "gamma"),
]


@pytest.mark.parametrize(("name", "options", "message"), BAD_SETTINGS, ids=lambda v: str(v))
def test_bad_settings_are_one_line_errors_at_creation(name, options, message):
    model, _, _ = toy(seed=0, vocab=4, dim=3, widths=(3,), batch=1, seq=2)
    before = snapshot(model)
    with pytest.raises(BenchError) as error:
        create(name, model, **options)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --- 12: every method under every regularizer -----------------------------------------------------------------

_BUILT: dict[str, tuple] = {}


def built(method_name: str):
    """A fresh copy of ``method_name`` (built once per module, without pre-trained weights) and a batch of 4."""
    if method_name not in _BUILT:
        torch.manual_seed(0)
        method = build_method(RunConfig(method=method_name, pretrained="none"))
        _BUILT[method_name] = (method, method_inputs(method, batch=4))
    method, inputs = _BUILT[method_name]
    return copy.deepcopy(method), inputs


@pytest.mark.parametrize("regularizer_name", list_regularizers())
@pytest.mark.parametrize("method_name", list_methods())
def test_every_method_trains_under_every_regularizer(method_name, regularizer_name):
    method, (reference, text, target) = built(method_name)
    method.train()
    trainable_names = {name for name, p in method.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable(method), lr=1e-3)
    regularizer = create(regularizer_name, method)
    passes = []

    def closure() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(method.losses(reference, text, target).values())
        loss.backward()
        passes.append(float(loss.detach()))
        return float(loss.detach())

    before = snapshot(method)
    for _ in range(2):  # two steps, so wrf-momentum also takes a perturbed one
        assert math.isfinite(regularizer.step(closure, optimizer))
    assert all(math.isfinite(loss) for loss in passes)
    changed = {name for name, value in snapshot(method).items() if not torch.equal(value, before[name])}
    assert changed and changed <= trainable_names
    assert len(passes) == {"none": 2, "wrf-momentum": 2, "rwp": 2}.get(regularizer_name, 4)


# --- 13: step timing ------------------------------------------------------------------------------------------


def test_last_seconds_names_the_phases_each_regularizer_ran():
    model, tokens, target = toy(seed=0, vocab=4, dim=3, widths=(3, 3), batch=2, seq=2)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.01)
    closure = Recorder(model, optimizer, tokens, target)
    expected = {
        ("wrf", 0.1): set(PHASES),
        ("wrf", 0.0): {"first_pass", "optimizer_step"},
        ("sam", 0.1): set(PHASES),
        ("none", None): {"first_pass", "optimizer_step"},
    }
    for (name, size), phases in expected.items():
        regularizer = create(name, model, **({} if size is None else {"gamma" if name == "wrf" else "rho": size}))
        assert regularizer.last_seconds == {}
        regularizer.step(closure, optimizer)
        assert set(regularizer.last_seconds) == phases, name
        assert all(value >= 0 and math.isfinite(value) for value in regularizer.last_seconds.values())
    # wrf-momentum: the first step (no moment yet) is a plain one; later ones take their ONE pass at w + e.
    optimizer = torch.optim.AdamW(trainable(model), lr=0.01)
    closure = Recorder(model, optimizer, tokens, target)
    regularizer = create("wrf-momentum", model, gamma=0.1)
    regularizer.step(closure, optimizer)
    assert set(regularizer.last_seconds) == {"first_pass", "optimizer_step"}
    regularizer.step(closure, optimizer)
    assert set(regularizer.last_seconds) == set(PHASES) - {"first_pass"}


def test_step_timer_measures_each_phase_since_the_previous_mark():
    timer = StepTimer(cuda=False)
    timer.start()
    time.sleep(0.02)
    timer.mark("first_pass")
    timer.mark("optimizer_step")
    seconds = timer.seconds()
    assert set(seconds) == {"first_pass", "optimizer_step"}
    assert 0.02 <= seconds["first_pass"] < 1.0 and 0 <= seconds["optimizer_step"] < 0.02
    timer.start()
    timer.mark("second_pass")
    assert set(timer.seconds()) == {"second_pass"}  # start() forgets the previous step


# --- warm-up, describe(), mixed precision ---------------------------------------------------------------------


def test_wrf_warmup_ramps_gamma_linearly_per_step():
    model, tokens, target = toy(seed=1, vocab=4, dim=3, widths=(4,), batch=2, seq=2, dtype=torch.float64)
    optimizer = torch.optim.SGD(trainable(model), lr=0.01)
    regularizer = create("wrf", model, gamma=0.2, warmup_steps=4)
    closure = Recorder(model, optimizer, tokens, target)
    for step in range(6):
        regularizer.step(closure, optimizer)
        first, second = closure.calls[-2:]
        weight = first.params["body.0.weight"]
        expected = 0.2 * min(1.0, (step + 1) / 4) * norm(weight)
        assert norm(second.params["body.0.weight"] - weight) == pytest.approx(expected, rel=1e-5), step
    assert regularizer.steps == 6


def test_describe_records_the_name_and_the_settings_that_are_set():
    model, _, _ = toy(seed=0, vocab=4, dim=3, widths=(3,), batch=1, seq=2)
    assert create("none", model).describe() == {"name": "none"}
    assert create("wrf", model).describe() == {
        "name": "wrf",
        "gamma": 1e-3,
        "warmup_steps": 0,
        "restore": "before_step",
    }
    assert create("sam", model, rho=0.1, exclude="bias").describe() == {"name": "sam", "rho": 0.1, "exclude": "bias"}
    assert create("asam", model).describe() == {"name": "asam", "rho": 0.5, "eta": 0.01}


@pytest.mark.parametrize("name", PERTURBING)
def test_an_overflowed_scaled_step_never_writes_non_finite_weights_and_is_skipped(name):
    """Under a GradScaler, an fp16 overflow (inf gradients) must not turn into NaN weights or a NaN loss: the
    scaler skips the step and lowers its scale, as in plain training."""
    model, tokens, target = toy(seed=2, vocab=5, dim=3, widths=(4, 3), batch=3, seq=2)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    regularizer = create(name, model, **STRONG[name])
    regularizer.scaler = scaler
    regularizer.step(Recorder(model, optimizer, tokens, target, scaler=scaler), optimizer)  # a clean first step

    def overflow(module):
        module.body[0].weight.grad[0, 0] = math.inf

    closure = Recorder(model, optimizer, tokens, target, scaler=scaler, after_backward=overflow)
    before, scale = snapshot(model), scaler.get_scale()
    loss = regularizer.step(closure, optimizer)
    assert math.isfinite(loss)
    for call in closure.calls:
        assert math.isfinite(call.loss)
        assert all(torch.isfinite(value).all() for value in call.params.values())
    for tensor, value in snapshot(model).items():
        assert torch.equal(value, before[tensor]), tensor
    assert scaler.get_scale() < scale
