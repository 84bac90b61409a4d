"""The BLIP-2 backbone: the tiny config offline, the Q-Former passes, its tokenizer, LAVIS weights and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from bench.backbones.blip2 import (
    FUSION_MODES,
    MODEL_CONFIG_DIR,
    TINY_BLIP2,
    hf_to_lavis,
    lavis_to_hf,
    load_blip2,
)
from bench.data.synth.scenes import BACKGROUNDS, CELLS, COLOURS, EDIT_KINDS, SHAPES, SIZES, TEXTURES
from bench.errors import BenchError

TEXTS = ["Add a small red circle in the top left", "make the background grey", "replace the star with a heart"]


@pytest.fixture(scope="module")
def backbone():
    return load_blip2()


@pytest.fixture(scope="module")
def image_tokens(backbone):
    with torch.no_grad():
        return backbone.image_tokens(torch.randn(len(TEXTS), 3, backbone.resolution, backbone.resolution))


def perturbed_state(backbone) -> dict[str, torch.Tensor]:
    """The tiny model's weights plus noise, so that loading them is visible in the outputs."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, value in backbone.model.state_dict().items():
        noise = 0.01 * torch.randn(value.shape, generator=generator)
        # transformers' ViT key bias must stay zero: LAVIS cannot hold it.
        if key.endswith("self_attn.qkv.bias"):
            noise[value.shape[0] // 3 : 2 * value.shape[0] // 3] = 0
        state[key] = value + noise
    return state


def outputs(backbone, image_tokens) -> list[torch.Tensor]:
    """Every pass of ``backbone`` on fixed inputs."""
    ids, mask = backbone.tokenize(TEXTS)
    with torch.no_grad():
        pixels = torch.linspace(-1, 1, len(TEXTS) * 3 * 64 * 64).reshape(len(TEXTS), 3, 64, 64)
        return [
            backbone.image_tokens(pixels),
            backbone.query_embeddings(image_tokens),
            backbone.text_embedding(ids, mask),
            *(backbone.fused_query(image_tokens, ids, mask, mode) for mode in FUSION_MODES),
        ]


def assert_same_outputs(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_tiny_config_is_small_deterministic_and_leaves_the_global_rng_alone(backbone):
    assert (backbone.resolution, backbone.embed_dim, backbone.num_query_tokens) == (64, 128, 8)
    assert sum(p.numel() for p in backbone.model.parameters()) < 3_000_000
    assert backbone.describe() == {"family": "blip2", "arch": TINY_BLIP2, "pretrained": None}
    rng = torch.random.get_rng_state()
    again = load_blip2()
    assert torch.equal(rng, torch.random.get_rng_state())
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    # LAVIS draws the query tokens at random; all-equal queries would stay equal under training.
    assert not torch.allclose(backbone.model.query_tokens[0, 0], backbone.model.query_tokens[0, 1])


def test_pass_shapes_and_unit_norms(backbone, image_tokens):
    batch = len(TEXTS)
    ids, mask = backbone.tokenize(TEXTS)
    assert image_tokens.shape == (batch, (64 // 8) ** 2 + 1, 128)
    with torch.no_grad():
        per_query = backbone.query_embeddings(image_tokens)
        prompt = torch.randn(batch, backbone.num_query_tokens, 128)
        features = {
            "text": backbone.text_embedding(ids, mask),
            "prompt": backbone.prompt_query(prompt, ids, mask),
            **{mode: backbone.fused_query(image_tokens, ids, mask, mode) for mode in FUSION_MODES},
        }
    assert per_query.shape == (batch, 8, 128)
    torch.testing.assert_close(per_query.norm(dim=-1), torch.ones(batch, 8))
    for name, feature in features.items():
        assert feature.shape == (batch, 128), name
        torch.testing.assert_close(feature.norm(dim=-1), torch.ones(batch), msg=name)
    assert not torch.allclose(features["sprc"], features["cls"])
    assert not torch.allclose(features["sprc"], features["mean"])


def test_padding_positions_are_masked_in_every_text_pass(backbone, image_tokens):
    ids, mask = backbone.tokenize(TEXTS)
    noisy = torch.where(mask.bool(), ids, torch.randint(5, len(backbone.tokenizer), ids.shape))
    assert not torch.equal(noisy, ids)
    prompt = torch.randn(len(TEXTS), backbone.num_query_tokens, 128)
    with torch.no_grad():
        for encode in (
            lambda i: backbone.text_embedding(i, mask),
            lambda i: backbone.prompt_query(prompt, i, mask),
            *(lambda i, m=mode: backbone.fused_query(image_tokens, i, mask, m) for mode in FUSION_MODES),
        ):
            torch.testing.assert_close(encode(noisy), encode(ids), rtol=0, atol=1e-5)


def test_unknown_fusion_mode_is_a_bench_error(backbone, image_tokens):
    ids, mask = backbone.tokenize(TEXTS)
    with pytest.raises(BenchError, match="unknown BLIP-2 fusion mode 'sum'"):
        backbone.fused_query(image_tokens, ids, mask, "sum")


def test_tokenizer_covers_any_lowercase_word_and_the_synthetic_vocabulary(backbone):
    tokenizer = backbone.tokenizer
    spec = json.loads((MODEL_CONFIG_DIR / f"{TINY_BLIP2}.json").read_text())
    vocab_lines = (MODEL_CONFIG_DIR / spec["tokenizer"]["vocab_file"]).read_text().splitlines()
    assert len(tokenizer) == len(vocab_lines) == spec["model"]["qformer_config"]["vocab_size"]

    ids, mask = backbone.tokenize(["Zigzagging QUOKKAS juggle xylophones, 42 times!", "x " * 100])
    assert ids.shape == mask.shape == (2, 32)
    assert tokenizer.unk_token_id not in ids.tolist()[0] + ids.tolist()[1]
    assert ids[1, -1] == tokenizer.sep_token_id and mask[1].all()

    words = {*SHAPES, *COLOURS, *SIZES, *BACKGROUNDS, *TEXTURES, *EDIT_KINDS, *" ".join(CELLS).split()}
    split = [word for word in sorted(words) if len(tokenizer.tokenize(word)) != 1]
    assert not split, f"synthetic words split into pieces: {split}"


def test_lavis_mapping_round_trips_and_uses_lavis_names(backbone):
    state = perturbed_state(backbone)
    temp = torch.tensor(0.05)
    lavis = hf_to_lavis(state, {"temp": temp})
    # Correspondences stated by transformers' BLIP-2 conversion script.
    pairs = {
        "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
        "Qformer.bert.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "Qformer.bert.encoder.layer.1.attention.self.query.weight": "qformer.encoder.layer.1.attention.attention.query.weight",
        "Qformer.bert.encoder.layer.1.crossattention.self.value.bias": "qformer.encoder.layer.1.crossattention.attention.value.bias",
        "Qformer.bert.encoder.layer.0.crossattention.output.dense.weight": "qformer.encoder.layer.0.crossattention.output.dense.weight",
        "Qformer.bert.encoder.layer.0.output_query.LayerNorm.bias": "qformer.encoder.layer.0.output_query.LayerNorm.bias",
        "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
        "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
        "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual_encoder.blocks.2.norm1.weight": "vision_model.encoder.layers.2.layer_norm1.weight",
        "visual_encoder.blocks.2.attn.qkv.weight": "vision_model.encoder.layers.2.self_attn.qkv.weight",
        "visual_encoder.blocks.2.attn.proj.bias": "vision_model.encoder.layers.2.self_attn.projection.bias",
        "visual_encoder.blocks.2.mlp.fc2.weight": "vision_model.encoder.layers.2.mlp.fc2.weight",
        "ln_vision.weight": "vision_model.post_layernorm.weight",
        "query_tokens": "query_tokens",
        "vision_proj.weight": "vision_projection.weight",
        "text_proj.bias": "text_projection.bias",
        "itm_head.weight": "itm_head.weight",
    }
    for lavis_key, hf_key in pairs.items():
        assert torch.equal(lavis[lavis_key], state[hf_key]), lavis_key
    q_bias, k_bias, v_bias = state["vision_model.encoder.layers.2.self_attn.qkv.bias"].chunk(3)
    assert torch.equal(lavis["visual_encoder.blocks.2.attn.q_bias"], q_bias)
    assert torch.equal(lavis["visual_encoder.blocks.2.attn.v_bias"], v_bias)
    assert not any(key.startswith(("qformer.", "vision_model.", "embeddings.")) for key in lavis)

    back, extras = lavis_to_hf(lavis)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    assert extras == {"temp": temp}


def test_a_nonzero_vit_key_bias_cannot_become_lavis(backbone):
    state = dict(backbone.model.state_dict())
    key = "vision_model.encoder.layers.0.self_attn.qkv.bias"
    state[key] = torch.ones_like(state[key])
    with pytest.raises(ValueError, match="key bias"):
        hf_to_lavis(state)


def test_weights_files_in_every_format_reproduce_the_outputs(backbone, image_tokens, tmp_path):
    state = perturbed_state(backbone)
    original = load_blip2()
    original.model.load_state_dict(state)
    expected = outputs(original, image_tokens)
    assert not torch.allclose(expected[1], outputs(backbone, image_tokens)[1])

    lavis = hf_to_lavis(state, {"temp": torch.tensor(0.05)})
    lavis["Qformer.cls.predictions.bias"] = torch.zeros(3)  # the LM head: no counterpart, ignored
    torch.save({"model": lavis, "epoch": 3}, tmp_path / "lavis.pth")
    torch.save(state, tmp_path / "hf.pt")
    from safetensors.torch import save_file

    save_file(state, tmp_path / "hf.safetensors")
    for name in ("lavis.pth", "hf.pt", "hf.safetensors"):
        loaded = load_blip2(weights=str(tmp_path / name))
        assert_same_outputs(outputs(loaded, image_tokens), expected)
        assert loaded.describe()["pretrained"] == str(tmp_path / name)
    assert load_blip2(weights=str(tmp_path / "lavis.pth")).extras["temp"] == pytest.approx(0.05)


def test_a_local_transformers_folder_loads(backbone, image_tokens, tmp_path):
    backbone.model.save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    loaded = load_blip2(str(tmp_path))
    assert (loaded.resolution, loaded.embed_dim, loaded.num_query_tokens) == (64, 128, 8)
    assert torch.equal(loaded.tokenize(TEXTS)[0], backbone.tokenize(TEXTS)[0])
    assert_same_outputs(outputs(loaded, image_tokens), outputs(backbone, image_tokens))


def test_weights_for_another_architecture_are_a_bench_error_naming_the_file(backbone, tmp_path):
    wider = dict(backbone.model.state_dict())
    wider["vision_projection.weight"] = torch.zeros(256, 128)
    torch.save(wider, tmp_path / "wider.pt")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cases = {
        "wider.pt": r"does not fit BLIP-2 model cirbench-tiny-blip2: size mismatch for vision_projection\.weight",
        "linear.pt": r"does not fit BLIP-2 model cirbench-tiny-blip2: missing key .* \(and \d+ more\)",
        "notes.pth": r"cannot read .* as a state dict",
        "absent.pth": r"does not exist",
    }
    for name, message in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(BenchError, match=message) as error:
            load_blip2(weights=path)
        assert path in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("cirbench-tiny-blip", "unknown BLIP-2 model 'cirbench-tiny-blip'"),
        ("./no/such/folder", "unknown BLIP-2 model"),
        ("Salesforce/not-a-cached-model", "cannot load BLIP-2 model Salesforce/not-a-cached-model"),
    ],
)
def test_unknown_models_are_bench_errors(model, message):
    with pytest.raises(BenchError, match=message):
        load_blip2(model)
