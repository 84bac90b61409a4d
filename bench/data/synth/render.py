"""Scene -> PNG bytes with Pillow, deterministically: same scene and settings, same bytes.

Scenes are drawn at ``supersample`` times the target size and downscaled with a Lanczos filter, which anti-aliases
the shape edges (Pillow's polygon fill has none) without any randomness.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from bench.data.synth.scenes import BACKGROUNDS, COLOURS, Scene, SceneObject

# Object half-extent as a fraction of a grid cell's side.
SIZE_FRACTIONS = {"small": 0.25, "large": 0.42}
# Texture period as a fraction of the image side, and how far the texture's second tone is from the background.
TEXTURE_PERIOD = 1 / 8
TEXTURE_CONTRAST = 40


def _fit_unit_box(points: list[tuple[float, float]], scale: float) -> tuple[tuple[float, float], ...]:
    """Centre ``points`` on their bounding box and scale its larger half-side to ``scale``."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(((x - cx) / half * scale, (y - cy) / half * scale) for x, y in points)


def _regular(count: int, start_degrees: float, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or a star, with alternating ``radii``), y pointing down."""
    return [
        (
            radii[i % len(radii)] * math.cos(math.radians(start_degrees + 360 * i / count)),
            radii[i % len(radii)] * math.sin(math.radians(start_degrees + 360 * i / count)),
        )
        for i in range(count)
    ]


def _heart() -> list[tuple[float, float]]:
    steps = 48
    points = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        points.append((x, y))
    return points


_ARM = 0.32
# Unit outlines (half-extent 1 before the per-shape scale); the scales even out the shapes' visual weight.
SHAPE_OUTLINES = {
    "square": _fit_unit_box([(-1, -1), (1, -1), (1, 1), (-1, 1)], 0.82),
    "triangle": _fit_unit_box(_regular(3, -90), 1.0),
    "star": _fit_unit_box(_regular(10, -90, (1.0, 0.45)), 1.05),
    "cross": _fit_unit_box(
        [
            (-_ARM, -1),
            (_ARM, -1),
            (_ARM, -_ARM),
            (1, -_ARM),
            (1, _ARM),
            (_ARM, _ARM),
            (_ARM, 1),
            (-_ARM, 1),
            (-_ARM, _ARM),
            (-1, _ARM),
            (-1, -_ARM),
            (-_ARM, -_ARM),
        ],
        0.95,
    ),
    "diamond": _fit_unit_box([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)], 1.0),
    "hexagon": _fit_unit_box(_regular(6, 0), 0.95),
    "heart": _fit_unit_box(_heart(), 0.95),
}
CIRCLE_RADIUS = 0.9


def texture_tone(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """The texture's second tone: darker on a light background, lighter on a dark one."""
    shift = -TEXTURE_CONTRAST if sum(background) > 3 * 100 else TEXTURE_CONTRAST
    return tuple(min(255, max(0, channel + shift)) for channel in background)


def _draw_background(draw: ImageDraw.ImageDraw, scene: Scene, side: int) -> None:
    base = BACKGROUNDS[scene.background]
    draw.rectangle((0, 0, side - 1, side - 1), fill=base)
    if scene.texture == "plain":
        return
    tone = texture_tone(base)
    period = side * TEXTURE_PERIOD
    bands = round(1 / TEXTURE_PERIOD)
    for row in range(bands):
        top, bottom = round(row * period), round((row + 0.5) * period) - 1
        if scene.texture == "striped":
            draw.rectangle((0, top, side - 1, bottom), fill=tone)
            continue
        for column in range(row % 2, bands, 2):
            left, right = round(column * period), round((column + 1) * period) - 1
            draw.rectangle((left, round(row * period), right, round((row + 1) * period) - 1), fill=tone)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    cell_side = side / 3
    row, column = divmod(obj.cell, 3)
    cx, cy = (column + 0.5) * cell_side, (row + 0.5) * cell_side
    half = SIZE_FRACTIONS[obj.size] * cell_side
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        r = CIRCLE_RADIUS * half
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx + x * half, cy + y * half) for x, y in SHAPE_OUTLINES[obj.shape]], fill=fill)


def render_image(scene: Scene, image_size: int, supersample: int) -> Image.Image:
    """``scene`` as an ``image_size`` x ``image_size`` RGB image."""
    side = image_size * supersample
    image = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, scene, side)
    for obj in scene.objects:
        _draw_object(draw, obj, side)
    if supersample > 1:
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return image


def render_png(scene: Scene, image_size: int, supersample: int) -> bytes:
    """``scene`` encoded as PNG with fixed settings and no metadata chunks (no time, no text)."""
    buffer = io.BytesIO()
    render_image(scene, image_size, supersample).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
