"""Image preprocessing of CLIP4Cir (``src/data_utils.py``): optional padding, then CLIP's resize/crop/normalise.

Train and eval use the same transform (CLIP4Cir and SPRC do no augmentation), so frozen-tower features can be cached.
Every step is a small frozen object whose repr states its parameters, so a transform's repr identifies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional

from bench.errors import BenchError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRANSFORM_KINDS = ("targetpad", "squarepad", "clip")


@dataclass(frozen=True)
class TargetPad:
    """Pad an image black, evenly on both sides, only when its aspect ratio reaches ``ratio``.

    With r = max(w, h) / min(w, h): if r < ``ratio`` the image is returned unchanged; otherwise, with
    s = max(w, h) / ``ratio``, it is padded by int((s - w) / 2) left and right and int((s - h) / 2) top and bottom
    (each at least 0), which brings the aspect ratio down to about ``ratio``.
    """

    ratio: float = 1.25

    def __post_init__(self) -> None:
        if not self.ratio >= 1:
            raise BenchError(f"target pad ratio must be at least 1, got {self.ratio!r}")

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        longest = max(width, height)
        if longest / min(width, height) < self.ratio:
            return image
        target_side = longest / self.ratio
        horizontal = max(int((target_side - width) / 2), 0)
        vertical = max(int((target_side - height) / 2), 0)
        return functional.pad(image, [horizontal, vertical, horizontal, vertical], fill=0, padding_mode="constant")


@dataclass(frozen=True)
class SquarePad:
    """Pad an image black towards a square: int((max - w) / 2) left and right, int((max - h) / 2) top and bottom.

    An odd difference leaves the result one pixel short of square, as in CLIP4Cir; the centre crop removes it.
    """

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        longest = max(width, height)
        horizontal = int((longest - width) / 2)
        vertical = int((longest - height) / 2)
        return functional.pad(image, [horizontal, vertical, horizontal, vertical], fill=0, padding_mode="constant")


@dataclass(frozen=True)
class ToRGB:
    """Convert a PIL image to RGB (greyscale, palette and RGBA images occur in both benchmarks)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")


def build_transform(kind: str, resolution: int, target_ratio: float = 1.25) -> transforms.Compose:
    """The PIL image -> (3, ``resolution``, ``resolution``) float tensor transform of ``kind``.

    ``kind`` is ``"targetpad"`` (``TargetPad(target_ratio)`` first), ``"squarepad"`` (``SquarePad`` first) or
    ``"clip"`` (no padding); then the short side is resized to ``resolution`` (bicubic), centre-cropped to a square,
    converted to RGB, made a tensor and normalised with CLIP's mean and std.
    """
    if kind not in TRANSFORM_KINDS:
        raise BenchError(f"unknown image transform {kind!r} (valid: {', '.join(TRANSFORM_KINDS)})")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise BenchError(f"image transform resolution must be a positive integer, got {resolution!r}")
    padding = {"targetpad": [TargetPad(target_ratio)], "squarepad": [SquarePad()], "clip": []}[kind]
    return transforms.Compose(
        [
            *padding,
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(resolution),
            ToRGB(),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
