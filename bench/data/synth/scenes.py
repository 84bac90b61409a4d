"""The synthetic world's vocabulary, its scenes and edits, and how one split draws them.

A scene is a background (colour and texture) plus one object per occupied cell of a 3x3 grid; an object has a shape,
a colour and a size. An edit turns one scene into another by changing one cell (or, for a move, two) or the
background colour, and knows its inverse, which is what lets one image set serve queries in every direction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
# Saturated hues that stay apart from each other and from every background colour below.
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 155, 55),
    "cyan": (40, 200, 215),
    "blue": (35, 65, 215),
    "purple": (135, 50, 190),
    "pink": (245, 125, 195),
}
SIZES = ("small", "large")
# Row-major over the 3x3 grid: cell index = 3 * row + column.
CELLS = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
BACKGROUNDS = {
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
    "beige": (215, 200, 160),
}
TEXTURES = ("plain", "striped", "checkered")
EDIT_KINDS = ("add", "remove", "replace", "colour", "shape", "size", "move", "background")

Combination = tuple[str, str]
"""A (colour, shape) pair: the unit the compositional splits hold out."""


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object: where it sits (a cell index, see ``CELLS``) and what it looks like."""

    cell: int
    shape: str
    colour: str
    size: str

    @property
    def combination(self) -> Combination:
        """The object's (colour, shape) pair."""
        return (self.colour, self.shape)

    def to_json(self) -> dict:
        """The object as JSON-ready attributes, its cell by name."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "cell": CELLS[self.cell]}


@dataclass(frozen=True)
class Scene:
    """A background plus objects in distinct cells; ``objects`` is sorted by cell, so equal scenes compare equal."""

    background: str
    texture: str
    objects: tuple[SceneObject, ...]

    def object_at(self, cell: int) -> SceneObject | None:
        """The object in ``cell``, or None if the cell is empty."""
        return next((obj for obj in self.objects if obj.cell == cell), None)

    def empty_cells(self) -> list[int]:
        """The unoccupied cells, in grid order."""
        occupied = {obj.cell for obj in self.objects}
        return [cell for cell in range(len(CELLS)) if cell not in occupied]

    def with_objects(self, objects: list[SceneObject]) -> Scene:
        """This background with ``objects`` instead."""
        return Scene(self.background, self.texture, tuple(sorted(objects)))

    def combinations(self) -> set[Combination]:
        """The (colour, shape) pairs present."""
        return {obj.combination for obj in self.objects}

    def to_json(self) -> dict:
        """The scene as JSON-ready attributes (the image metadata written beside the datasets)."""
        return {
            "background": self.background,
            "texture": self.texture,
            "objects": [obj.to_json() for obj in self.objects],
        }


@dataclass(frozen=True)
class ObjectEdit:
    """Change one object: ``before`` None adds ``after``, ``after`` None removes ``before``, else ``before`` becomes
    ``after`` (the kind, e.g. colour or move, follows from which attributes differ)."""

    before: SceneObject | None
    after: SceneObject | None

    @property
    def kind(self) -> str:
        """One of ``EDIT_KINDS``."""
        if self.before is None:
            return "add"
        if self.after is None:
            return "remove"
        if self.before.cell != self.after.cell:
            return "move"
        changed = [
            attr for attr in ("shape", "colour", "size") if getattr(self.before, attr) != getattr(self.after, attr)
        ]
        if changed == ["shape", "colour"]:
            return "replace"
        (attr,) = changed
        return attr

    @property
    def cells(self) -> frozenset[int]:
        """The cells this edit reads or writes; edits with disjoint cells commute."""
        return frozenset(obj.cell for obj in (self.before, self.after) if obj is not None)

    def inverse(self) -> ObjectEdit:
        """The edit that undoes this one."""
        return ObjectEdit(self.after, self.before)

    def apply(self, scene: Scene) -> Scene:
        """``scene`` with this edit made (the ``before`` object must be in it)."""
        objects = [obj for obj in scene.objects if obj != self.before]
        if self.after is not None:
            objects.append(self.after)
        return scene.with_objects(objects)


@dataclass(frozen=True)
class BackgroundEdit:
    """Change the background colour (the texture is kept: FashionIQ categories are textures)."""

    before: str
    after: str

    kind = "background"

    @property
    def cells(self) -> frozenset[int]:
        """No cell: a background edit commutes with every object edit."""
        return frozenset()

    def inverse(self) -> BackgroundEdit:
        """The edit that undoes this one."""
        return BackgroundEdit(self.after, self.before)

    def apply(self, scene: Scene) -> Scene:
        """``scene`` with the new background colour."""
        return replace(scene, background=self.after)


Edit = ObjectEdit | BackgroundEdit


class SceneSampler:
    """Draws scenes and edits for one split from one random stream.

    Only ``allowed`` (colour, shape) pairs are ever produced, by scene sampling and by edits alike: a training
    split's sampler leaves out the held-out combinations, an evaluation split's allows them all.
    """

    def __init__(self, rng: random.Random, allowed: tuple[Combination, ...], max_objects: int):
        self.rng = rng
        self.allowed = allowed
        self.allowed_set = frozenset(allowed)
        self.max_objects = max_objects

    def scene(self, texture: str | None = None, first: Combination | None = None) -> Scene:
        """A random scene with 1..max_objects objects; ``texture`` fixed if given; ``first`` forces one object's
        (colour, shape) pair (how evaluation splits are made to contain every held-out combination)."""
        rng = self.rng
        count = rng.randint(1, self.max_objects)
        cells = rng.sample(range(len(CELLS)), count)
        pairs = [first or rng.choice(self.allowed)] + [rng.choice(self.allowed) for _ in cells[1:]]
        objects = [
            SceneObject(cell, shape, colour, rng.choice(SIZES))
            for cell, (colour, shape) in zip(cells, pairs, strict=True)
        ]
        background = rng.choice(list(BACKGROUNDS))
        return Scene(background, texture or rng.choice(TEXTURES), tuple(sorted(objects)))

    def edit(
        self, scene: Scene, busy_cells: frozenset[int] = frozenset(), allow_background: bool = True
    ) -> Edit | None:
        """A random edit of ``scene`` that touches none of ``busy_cells`` (so it commutes with the edits that did);
        the kind is drawn uniformly among the feasible ones. None if no edit is feasible."""
        rng = self.rng
        free_objects = [obj for obj in scene.objects if obj.cell not in busy_cells]
        free_cells = [cell for cell in scene.empty_cells() if cell not in busy_cells]
        kinds = []
        if free_cells and len(scene.objects) < self.max_objects:
            kinds.append("add")
        if free_objects:
            kinds += ["replace", "colour", "shape", "size"]
            if len(scene.objects) > 1:
                kinds.append("remove")
            if free_cells:
                kinds.append("move")
        if allow_background:
            kinds.append("background")
        if not kinds:
            return None
        kind = rng.choice(kinds)

        if kind == "background":
            return BackgroundEdit(scene.background, rng.choice([bg for bg in BACKGROUNDS if bg != scene.background]))
        if kind == "add":
            colour, shape = rng.choice(self.allowed)
            return ObjectEdit(None, SceneObject(rng.choice(free_cells), shape, colour, rng.choice(SIZES)))
        obj = rng.choice(free_objects)
        if kind == "remove":
            return ObjectEdit(obj, None)
        if kind == "move":
            return ObjectEdit(obj, replace(obj, cell=rng.choice(free_cells)))
        if kind == "size":
            return ObjectEdit(obj, replace(obj, size=next(size for size in SIZES if size != obj.size)))
        # At most one held-out colour per shape and shape per colour, so these choices are never empty.
        if kind == "colour":
            colours = [c for c in COLOURS if c != obj.colour and (c, obj.shape) in self.allowed_set]
            return ObjectEdit(obj, replace(obj, colour=rng.choice(colours)))
        if kind == "shape":
            shapes = [s for s in SHAPES if s != obj.shape and (obj.colour, s) in self.allowed_set]
            return ObjectEdit(obj, replace(obj, shape=rng.choice(shapes)))
        pairs = [(c, s) for c, s in self.allowed if c != obj.colour and s != obj.shape]
        colour, shape = rng.choice(pairs)
        return ObjectEdit(obj, replace(obj, colour=colour, shape=shape))


def choose_heldout(rng: random.Random, count: int) -> tuple[Combination, ...]:
    """``count`` (colour, shape) pairs to hold out of training, no colour or shape used twice, so every colour and
    every shape is still seen in training (with other partners): the split tests composition, not new words."""
    colours = rng.sample(list(COLOURS), count)
    shapes = rng.sample(SHAPES, count)
    return tuple(sorted(zip(colours, shapes, strict=True)))
