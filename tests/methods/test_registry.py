"""Every registered method, full fine-tuning and LoRA: the contract the training loop relies on."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from bench.errors import BenchError
from bench.train import RunConfig, build_method
from methods import METHODS, create_method, list_methods, register_method

TEXTS = ["add a small red circle", "make the star blue instead of green", "remove the square", "move it left"]


def method_inputs(method, batch: int = 4):
    """A tiny batch of triplets in the form the harness gives this method (features when a tower is frozen)."""
    transform = method.image_transform()
    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(48, 60, 3, generator=generator) * 255).byte().numpy()) for _ in range(2 * batch)
    ]
    pixels = torch.stack([transform(image) for image in images])
    encode_images = method.frozen_image_encoder()
    encode_texts = method.frozen_text_encoder()
    with torch.no_grad():
        features = encode_images(pixels) if encode_images else pixels
        texts = encode_texts(TEXTS[:batch]) if encode_texts else TEXTS[:batch]
    return features[:batch], texts, features[batch:]


@pytest.fixture(params=[(name, regime) for name in list_methods() for regime in ("full", "lora")], ids=str)
def method_and_regime(request):
    name, regime = request.param
    torch.manual_seed(0)
    return build_method(RunConfig(method=name, pretrained="none", lora=regime == "lora")), regime


def test_one_step_changes_the_trainable_parameters_and_nothing_else(method_and_regime):
    method, regime = method_and_regime
    method.train()
    reference, text, target = method_inputs(method)
    before = {name: value.clone() for name, value in method.state_dict().items()}
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trainable
    if regime == "lora":
        assert all("lora_" in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    losses = method.losses(reference, text, target)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with_gradient = {n for n, p in method.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_gradient and with_gradient <= trainable
    optimizer.step()
    after = method.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert with_gradient <= changed
    assert changed <= trainable


def test_encoders_give_one_feature_per_query_and_gallery_image(method_and_regime):
    method, _ = method_and_regime
    method.eval()
    reference, text, target = method_inputs(method)
    with torch.no_grad():
        queries, gallery = method.encode_queries(reference, text), method.encode_targets(target)
    assert queries.ndim == 2 and len(queries) == 4
    assert gallery.shape[0] == 4 and gallery.shape[-1] == queries.shape[-1]


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_a_recipe_and_describes_its_backbone(name):
    cls = METHODS.get(name)
    assert cls.recipe.lr > 0 and cls.recipe.epochs > 0 and cls.recipe.schedule in ("cosine", "onecycle", "constant")
    assert (cls.__doc__ or "").strip()


def test_duplicate_method_name_raises():
    list_methods()
    with pytest.raises(ValueError, match="already registered"):
        register_method("combiner")(type("Other", (), {}))


def test_unknown_method_suggests_close_matches():
    with pytest.raises(BenchError, match="did you mean combiner"):
        create_method("combinr")


def test_unknown_method_setting_is_named():
    with pytest.raises(BenchError, match="unknown key 'dropot'; did you mean 'dropout'"):
        create_method("combiner", pretrained="none", dropot=0.1)


def test_lora_targets_matching_nothing_is_a_clear_error():
    with pytest.raises(BenchError, match="--lora-targets: nothing_here match no module"):
        build_method(RunConfig(method="combiner", pretrained="none", lora=True, lora_targets=("nothing_here",)))


def test_a_combiner_run_never_imports_transformers():
    code = (
        "import sys; from bench.train import RunConfig, build_method; "
        "build_method(RunConfig(method='combiner', pretrained='none')); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
