"""The ``blip2`` method: registry, what trains and what stays frozen, its losses, encoders and settings."""

from __future__ import annotations

import json
import operator
import subprocess
import sys

import pytest
import torch
from PIL import Image

from bench.backbones.blip2 import hf_to_lavis, load_blip2
from bench.errors import BenchError
from methods import create_method
from methods.blip2 import Blip2Fusion, max_token_logits

TEXTS = ["add a small red circle", "make the background grey", "remove the star", "replace the heart with a cross"]
TOKENS = (65, 128)  # the tiny ViT's tokens per image and width


def image_tokens(seed: int) -> torch.Tensor:
    return torch.randn(len(TEXTS), *TOKENS, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def method():
    return create_method("blip2", pretrained="none").eval()


def test_create_method_builds_the_registered_class_with_sprc_defaults(method):
    assert isinstance(method, Blip2Fusion) and method.method_name == "blip2"
    assert method.config.fusion == "sprc" and not method.config.prompt_alignment
    assert method.recipe.schedule == "onecycle" and method.recipe.betas == (0.9, 0.98)
    assert method.temperature.item() == pytest.approx(0.07)
    assert method.frozen_text_encoder() is None
    assert method.describe_backbone() == {"family": "blip2", "arch": "cirbench-tiny-blip2", "pretrained": None}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fusion": "sum"}, "unknown fusion 'sum'"),
        ({"temperature_init": 0.0}, "temperature_init"),
        ({"align_weight": -1.0}, "align_weight"),
        ({"temprature_init": 0.1}, "unknown key 'temprature_init'"),
    ],
)
def test_bad_settings_are_bench_errors(settings, message):
    with pytest.raises(BenchError, match=message):
        create_method("blip2", pretrained="none", **settings)


@pytest.mark.parametrize("settings", [{}, {"prompt_alignment": True, "fusion": "cls"}])
def test_an_adamw_step_trains_the_qformer_side_only(settings):
    torch.manual_seed(0)
    method = create_method("blip2", pretrained="none", **settings).train()
    assert not method.model.vision_model.training  # frozen: always in eval mode
    frozen_names = ("model.vision_model.", "model.itm_head.")
    trainable = {name: p for name, p in method.named_parameters() if p.requires_grad}
    frozen = {name: p.detach().clone() for name, p in method.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(frozen_names) for name in frozen)
    assert all(not name.startswith(frozen_names) for name in trainable)
    assert "log_temperature" in trainable and "model.query_tokens" in trainable
    assert ("prompt_tokens" in trainable) == bool(settings)

    before = {name: p.detach().clone() for name, p in trainable.items()}
    losses = method.losses(image_tokens(0), TEXTS, image_tokens(1))
    expected = {"contrastive", "prompt", "align"} if settings else {"contrastive"}
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=0.05)
    sum(losses.values()).backward()
    without_grad = [name for name, p in trainable.items() if p.grad is None or not p.grad.any()]
    assert not without_grad, f"trainable but untouched by the losses: {without_grad}"
    optimizer.step()
    for name, p in trainable.items():
        assert not torch.equal(p, before[name]), name
    for name, p in method.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name


def test_encoders_match_the_training_loss_in_eval_mode(method):
    reference, target = image_tokens(2), image_tokens(3)
    with torch.no_grad():
        queries = method.encode_queries(reference, TEXTS)
        targets = method.encode_targets(target)
        loss = method.losses(reference, TEXTS, target)["contrastive"]
    assert queries.shape == (len(TEXTS), 128) and targets.shape == (len(TEXTS), 8, 128)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(len(TEXTS), 8))
    logits = torch.stack([(targets[j] @ queries.T).amax(dim=0) for j in range(len(TEXTS))], dim=1) / 0.07
    torch.testing.assert_close(max_token_logits(queries, targets, method.temperature), logits)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.arange(len(TEXTS))))


def test_frozen_image_encoder_and_transform_give_the_vit_tokens(method):
    transform = method.image_transform()
    pixels = transform(Image.new("RGB", (80, 40), (200, 30, 30)))
    assert pixels.shape == (3, 64, 64)
    assert "TargetPad(ratio=1.25)" in repr(transform)
    tokens = method.frozen_image_encoder()(pixels.unsqueeze(0))
    assert tokens.shape == (1, *TOKENS) and not tokens.requires_grad


def test_feature_cache_key_follows_the_weights_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(load_blip2().model.state_dict(), path)
    key = create_method("blip2", pretrained=str(path)).feature_cache_key()
    assert key["weights"][:2] == [str(path.resolve()), path.stat().st_size]
    assert key["backbone"] == "cirbench-tiny-blip2" and key["features"] == "blip2-vision-tokens"
    assert create_method("blip2", pretrained="none").feature_cache_key()["weights"] is None
    json.dumps(key, sort_keys=True)  # the harness hashes the key as JSON


def test_lavis_weights_set_the_temperature_and_the_prompt_tokens(tmp_path):
    backbone = load_blip2()
    prompt = torch.full((1, 8, 128), 0.5)
    lavis = hf_to_lavis(backbone.model.state_dict(), {"temp": torch.tensor(0.03), "prompt_tokens": prompt})
    torch.save({"model": lavis}, tmp_path / "sprc.pth")
    method = create_method("blip2", pretrained=str(tmp_path / "sprc.pth"), prompt_alignment=True)
    assert method.temperature.item() == pytest.approx(0.03)
    assert torch.equal(method.prompt_tokens.detach(), prompt)

    lavis["prompt_tokens"] = torch.zeros(1, 32, 128)  # SPRC's 32 prompt tokens, for a model with 8 queries
    torch.save({"model": lavis}, tmp_path / "sprc32.pth")
    with pytest.raises(BenchError, match=r"sprc32\.pth has prompt_tokens of shape \(1, 32, 128\)"):
        create_method("blip2", pretrained=str(tmp_path / "sprc32.pth"), prompt_alignment=True)


def test_lora_targets_name_the_qformer_attention_projections(method):
    ((path, names),) = method.lora_targets().items()
    qformer = operator.attrgetter(path)(method)
    assert qformer is method.model.qformer
    matched = [m for name, m in qformer.named_modules() if name.rsplit(".", 1)[-1] in names]
    # 2 layers x (self- and cross-attention) x (query, value)
    assert len(matched) == 8 and all(isinstance(m, torch.nn.Linear) for m in matched)


def test_importing_the_method_imports_neither_open_clip_nor_transformers():
    code = "import sys, methods.blip2; print(sorted({'open_clip', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
