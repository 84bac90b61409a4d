"""Preprocessing: CLIP4Cir's target/square padding formulas, output shape, CLIP normalisation, reprs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from bench.data.transforms import CLIP_MEAN, CLIP_STD, SquarePad, TargetPad, build_transform
from bench.errors import BenchError

WHITE = (255, 255, 255)


def normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    """The normalised (3,) tensor value of the 8-bit colour ``rgb``."""
    return torch.tensor([(value / 255 - mean) / std for value, mean, std in zip(rgb, CLIP_MEAN, CLIP_STD, strict=True)])


def test_clip_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_targetpad_wide_image_pads_to_the_formula_size():
    # r = 2 >= 1.25; s = 100 / 1.25 = 80; hp = max(int(-10), 0) = 0, vp = int(15) = 15.
    padded = TargetPad()(Image.new("RGB", (100, 50), WHITE))
    assert padded.size == (100, 80)
    assert padded.getpixel((50, 0)) == (0, 0, 0)
    assert padded.getpixel((50, 79)) == (0, 0, 0)
    assert padded.getpixel((50, 15)) == WHITE
    assert padded.getpixel((50, 64)) == WHITE


def test_targetpad_tall_image_pads_left_and_right():
    # s = 101 / 1.25 = 80.8; hp = int((80.8 - 30) / 2) = 25.
    padded = TargetPad()(Image.new("RGB", (30, 101), WHITE))
    assert padded.size == (80, 101)
    assert padded.getpixel((24, 50)) == (0, 0, 0)
    assert padded.getpixel((25, 50)) == WHITE


def test_targetpad_leaves_images_below_the_ratio_unchanged():
    image = Image.new("RGB", (100, 90), WHITE)
    assert TargetPad()(image) is image


def test_targetpad_custom_ratio():
    # r = 2; s = 100 / 2 = 50: nothing to add, the image is already at the ratio.
    assert TargetPad(ratio=2.0)(Image.new("RGB", (100, 50))).size == (100, 50)
    # r = 1.5 >= 1.1: s = 150 / 1.1 = 136.36; vp = int(18.18) = 18.
    assert TargetPad(ratio=1.1)(Image.new("RGB", (150, 100))).size == (150, 136)


def test_targetpad_rejects_a_ratio_below_one():
    with pytest.raises(BenchError, match="target pad ratio must be at least 1, got 0.5"):
        TargetPad(ratio=0.5)


@pytest.mark.parametrize(("size", "padded"), [((100, 50), (100, 100)), ((30, 80), (80, 80)), ((64, 64), (64, 64))])
def test_squarepad_gives_a_square(size, padded):
    assert SquarePad()(Image.new("RGB", size, WHITE)).size == padded


def test_squarepad_odd_difference_follows_the_formula():
    # int((100 - 51) / 2) = 24 on each side: 99, one short of square, as in CLIP4Cir.
    assert SquarePad()(Image.new("RGB", (100, 51))).size == (100, 99)


@pytest.mark.parametrize("kind", ["targetpad", "squarepad", "clip"])
@pytest.mark.parametrize("size", [(100, 50), (37, 90), (64, 64)])
def test_output_is_a_square_float_tensor(kind: str, size):
    tensor = build_transform(kind, 32)(Image.new("RGB", size, WHITE))
    assert tensor.shape == (3, 32, 32)
    assert tensor.dtype == torch.float32


def test_normalisation_uses_clip_mean_and_std():
    colour = (255, 0, 128)
    tensor = build_transform("clip", 24)(Image.new("RGB", (70, 50), colour))
    torch.testing.assert_close(tensor, normalised(colour)[:, None, None].expand(3, 24, 24))


def test_targetpad_pads_before_resizing():
    # 200x100 -> padded 200x160 -> resized 80x64 -> cropped 64x64: 12 black rows (of 64) on top and bottom.
    tensor = build_transform("targetpad", 64)(Image.new("RGB", (200, 100), WHITE))
    torch.testing.assert_close(tensor[:, 0, 0], normalised((0, 0, 0)))
    torch.testing.assert_close(tensor[:, 32, 32], normalised(WHITE))
    clip_only = build_transform("clip", 64)(Image.new("RGB", (200, 100), WHITE))
    torch.testing.assert_close(clip_only[:, 0, 0], normalised(WHITE))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_become_three_channels(mode: str):
    assert build_transform("squarepad", 16)(Image.new(mode, (20, 10))).shape == (3, 16, 16)


def test_unknown_kind_names_the_valid_ones():
    with pytest.raises(BenchError, match=r"unknown image transform 'pad' \(valid: targetpad, squarepad, clip\)"):
        build_transform("pad", 224)


@pytest.mark.parametrize("resolution", [0, -5, 224.0, True])
def test_bad_resolution(resolution):
    with pytest.raises(BenchError, match="resolution must be a positive integer"):
        build_transform("clip", resolution)


def test_steps_are_frozen_and_reprs_state_their_parameters():
    assert repr(TargetPad()) == "TargetPad(ratio=1.25)"
    assert repr(SquarePad()) == "SquarePad()"
    with pytest.raises(dataclasses.FrozenInstanceError):
        TargetPad().ratio = 2.0
    described = repr(build_transform("targetpad", 224))
    assert "TargetPad(ratio=1.25)" in described
    assert "Resize(size=224, interpolation=bicubic" in described
    assert repr(build_transform("targetpad", 224)) == described
    assert repr(build_transform("targetpad", 224, target_ratio=1.5)) != described
