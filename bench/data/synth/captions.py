"""Words for scenes and edits: one describer behind the corpus captions and the modification texts.

Objects are named by the same phrases everywhere ("a large red circle", "the red circle", "the top left"). A
modification text refers to an object of the reference image by its minimal distinguishing description (shape,
then colour + shape, size + shape, size + colour + shape, and shape + position when only the cell tells it apart),
so every text is unambiguous in its reference image.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from bench.data.synth.scenes import CELLS, BackgroundEdit, Edit, Scene, SceneObject

OBJECT_ATTRIBUTES = ("size", "colour", "shape")
# Least to most specific; the first that singles an object out is its minimal description.
REFERENCE_LEVELS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))

# Placeholders: {ref} the edited object in the reference image ("the red star"), {src}/{dst} cells ("the centre"),
# {new} an object phrase with article. A template is used only when all its placeholders have a value: {src},
# {old_colour} and {old_size} have none when the reference phrase already says them.
EDIT_TEMPLATES = {
    "add": (
        "add {new} in {dst}",
        "put {new} in {dst}",
        "there should also be {new} in {dst}",
        "has {new} in {dst} too",
        "add {new} to {dst}",
    ),
    "remove": ("remove {ref}", "take away {ref}", "get rid of {ref}", "without {ref}", "no longer has {ref}"),
    "replace": (
        "replace {ref} with {new}",
        "swap {ref} for {new}",
        "put {new} where {ref} is",
        "{ref} should be {new} instead",
        "has {new} instead of {ref}",
    ),
    "colour": (
        "make {ref} {new_colour}",
        "make {ref} {new_colour} instead of {old_colour}",
        "change the colour of {ref} to {new_colour}",
        "{ref} should be {new_colour}",
        "turn {ref} {new_colour}",
    ),
    "shape": (
        "turn {ref} into {new}",
        "change {ref} to {new}",
        "make {ref} {new} instead",
        "{ref} should be {new}",
    ),
    "size": (
        "make {ref} {comparative}",
        "{resize_verb} {ref}",
        "{ref} should be {new_size}",
        "make {ref} {new_size} instead of {old_size}",
    ),
    "move": (
        "move {ref} from {src} to {dst}",
        "move {ref} to {dst}",
        "{ref} should be in {dst}",
        "put {ref} into {dst}",
        "shift {ref} over to {dst}",
    ),
    "background": (
        "make the background {new_colour} instead of {old_colour}",
        "change the background to {new_colour}",
        "use {new_background}",
        "the background should be {new_colour}",
        "has {new_background}",
    ),
}
TEMPLATE_FIELDS = {
    template: frozenset(field for _, field, _, _ in string.Formatter().parse(template) if field)
    for templates in EDIT_TEMPLATES.values()
    for template in templates
}
EDIT_JOINERS = (" and ", ", and ", " and also ")
SCENE_PREFIXES = ("", "an image of ", "a picture of ", "a scene with ")


@dataclass(frozen=True)
class CaptionStyle:
    """How raw a layout's captions look: rates of a capitalised first letter, a leading space, a final period."""

    capitalise: float
    leading_space: float
    period: float


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_phrase(obj: SceneObject, attributes: tuple[str, ...] = OBJECT_ATTRIBUTES) -> str:
    """The object's ``attributes`` in natural order, e.g. "large red circle" or "red circle"."""
    return " ".join(getattr(obj, attr) for attr in OBJECT_ATTRIBUTES if attr in attributes)


def cell_phrase(cell: int) -> str:
    """A cell with its article, e.g. "the top left"."""
    return f"the {CELLS[cell]}"


def reference_phrase(obj: SceneObject, scene: Scene, full: bool = False) -> tuple[str, tuple[str, ...]]:
    """How a text points at ``obj`` of ``scene``: the minimal distinguishing description (or, with ``full``, size +
    colour + shape when that is unambiguous) and the attributes it names ("cell" when it names the position)."""
    for attributes in REFERENCE_LEVELS[-1:] if full else REFERENCE_LEVELS:
        matches = [other for other in scene.objects if all(getattr(other, a) == getattr(obj, a) for a in attributes)]
        if matches == [obj]:
            return f"the {object_phrase(obj, attributes)}", attributes
    return f"the {obj.shape} in {cell_phrase(obj.cell)}", ("shape", "cell")


def edit_caption(edit: Edit, scene: Scene, rng: random.Random, full_reference_rate: float) -> str:
    """A modification text for ``edit`` made to ``scene`` (the reference image), in a randomly chosen phrasing;
    with probability ``full_reference_rate`` the edited object is named with all its attributes."""
    if isinstance(edit, BackgroundEdit):
        fields = {
            "new_colour": edit.after,
            "old_colour": edit.before,
            "new_background": with_article(f"{edit.after} background"),
        }
        return _fill_template(edit.kind, fields, rng)
    before, after = edit.before, edit.after
    fields = {}
    if before is not None:
        fields["ref"], named = reference_phrase(before, scene, full=rng.random() < full_reference_rate)
        fields["src"] = None if "cell" in named else cell_phrase(before.cell)
        fields["old_colour"] = None if "colour" in named else before.colour
        fields["old_size"] = None if "size" in named else before.size
    if after is not None:
        fields["dst"] = cell_phrase(after.cell)
        fields["new_colour"] = after.colour
        fields["new_size"] = after.size
        fields["comparative"] = "bigger" if after.size == "large" else "smaller"
        fields["resize_verb"] = "enlarge" if after.size == "large" else "shrink"
        if edit.kind == "shape":
            fields["new"] = with_article(after.shape)
        elif edit.kind == "replace":
            fields["new"] = with_article(object_phrase(after, ("colour", "shape")))
        else:
            fields["new"] = with_article(object_phrase(after))
    return _fill_template(edit.kind, fields, rng)


def _fill_template(kind: str, fields: dict[str, str | None], rng: random.Random) -> str:
    available = {name for name, value in fields.items() if value is not None}
    templates = [t for t in EDIT_TEMPLATES[kind] if TEMPLATE_FIELDS[t] <= available]
    return rng.choice(templates).format(**fields)


def join_edit_captions(parts: list[str], rng: random.Random) -> str:
    """One text for several edits, in random order (the edits commute, so any order is right)."""
    parts = list(parts)
    rng.shuffle(parts)
    text = parts[0]
    for part in parts[1:]:
        text += rng.choice(EDIT_JOINERS) + part
    return text


def style_caption(text: str, rng: random.Random, style: CaptionStyle) -> str:
    """``text`` made to look like a raw crowd-sourced caption of a layout."""
    if rng.random() < style.capitalise:
        text = text[0].upper() + text[1:]
    if rng.random() < style.period:
        text += "."
    if rng.random() < style.leading_space:
        text = " " + text
    return text


def scene_caption(scene: Scene, rng: random.Random) -> str:
    """A full description of ``scene`` in one of several phrasings, e.g. "a large red circle in the top left and a
    small blue star in the centre on a striped grey background". Objects are listed in reading order or shuffled."""
    objects = list(scene.objects)
    if rng.random() < 0.5:
        rng.shuffle(objects)
    phrases = [f"{with_article(object_phrase(obj))} in {cell_phrase(obj.cell)}" for obj in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    if scene.texture == "plain":
        words = rng.choice([["plain", scene.background], [scene.background]])
    else:
        words = rng.choice([[scene.texture, scene.background], [scene.background, scene.texture]])
    background = with_article(" ".join(words) + " background")
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(SCENE_PREFIXES)}{listed} on {background}"
    if form == 1:
        return f"{rng.choice(SCENE_PREFIXES)}{listed} against {background}"
    return f"{background} with {listed}"
