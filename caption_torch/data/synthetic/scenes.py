"""Toy scenes: what one is, how one is laid out, and how to draw it as a picture.

The embedded dataset (:mod:`caption_torch.data.synthetic.generate`) has no photos, only the scene each
feature vector was made from. ``make_scene`` lays a scene out (counts, sizes, relation,
positions) and ``draw_scene`` turns one scene dict (one entry of ``{split}2014_scenes.json``)
into a flat cartoon on a matplotlib Axes, to show next to its captions. This module needs
only numpy and matplotlib and never touches pyplot, so it works headless (Agg) and stays
independent of the rest of the project. Its tables (``NOUN_SHAPES``, ``COLOURS``,
``SETTINGS``, ``SIZE_RADIUS``, ``RELATIONS``) are the names a scene may use; the
generator takes them from here.

A scene dict::

    {"setting": "beach",                      # a key of SETTINGS
     "relation": "left_of",                   # objects[0] <relation> objects[1]; None for one group
     "objects": [                             # 1 or 2 groups, 1-4 instances in all
        {"noun": "dog", "shape": "animal",    # noun: a key of NOUN_SHAPES; shape: a key of SHAPES
         "colour": "red", "size": "small",    # colour: a key of COLOURS; size: a key of SIZE_RADIUS
         "count": 2, "positions": [[0.21, 0.27], [0.32, 0.27]]},   # one (x, y) centre per instance
        {"noun": "ball", ...}]}

Positions live in the unit square, x to the right and y up; the ground is the band
below ``GROUND_Y``, and lower objects are nearer the viewer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib import patches

__all__ = [
    "draw_scene",
    "make_scene",
    "COLOURS",
    "SETTINGS",
    "SHAPES",
    "SIZE_RADIUS",
    "NOUN_SHAPES",
    "RELATIONS",
    "GROUND_Y",
]

GROUND_Y = 0.4  # top of the ground band, in unit-square coordinates

# Object half-extent (radius) in unit-square coordinates, by size attribute.
SIZE_RADIUS = {"small": 0.05, "medium": 0.075, "big": 0.1}

COLOURS = {
    "red": "#d62728",
    "blue": "#1f5fbf",
    "green": "#2ca02c",
    "yellow": "#f2d21b",
    "orange": "#ff7f0e",
    "purple": "#8e44ad",
    "pink": "#f48fb1",
    "white": "#fafafa",
    "black": "#222222",
    "brown": "#8c564b",
    "grey": "#8f8f8f",
}

# setting: (sky colour, ground colour, decoration drawn between background and objects)
SETTINGS = {
    "beach": ("#9fd3f5", "#f1dc9c", "sea"),
    "kitchen": ("#f3eee2", "#c9b79c", "tiles"),
    "park": ("#b5ddf7", "#7cc36b", "trees"),
    "street": ("#c7d6e2", "#8a8a8a", "road"),
    "living_room": ("#efe1cf", "#a0724f", "rug"),
    "snow": ("#dde7f0", "#ffffff", "snowflakes"),
    "forest": ("#a9c9a4", "#4f7a3a", "forest"),
    "desert": ("#f7d9a0", "#e3b96b", "sun"),
    "lake": ("#a9d5f2", "#6fae5a", "lake"),
    "field": ("#bfe3f7", "#b7d36b", "sun"),
    "office": ("#e3e6ea", "#9aa3ad", "window"),
    "garden": ("#c4e6f7", "#5fae4f", "flowers"),
}


# The shape each noun is drawn as (a key of SHAPES).
NOUN_SHAPES = {
    "ball": "circle",
    "box": "square",
    "cone": "triangle",
    "star": "star",
    "ring": "ring",
    "kite": "diamond",
    "cup": "cup",
    "hat": "hat",
    "umbrella": "umbrella",
    "car": "car",
    "bicycle": "bicycle",
    "chair": "chair",
    "book": "book",
    "clock": "clock",
    "dog": "animal",
    "cat": "animal",
    "horse": "animal",
    "cow": "animal",
    "sheep": "animal",
    "pig": "animal",
    "rabbit": "animal",
    "bear": "animal",
    "bird": "bird",
    "duck": "bird",
}
# Relations of objects[0] to objects[1]. Only these canonical directions exist, so one picture
# has one description; "under", "right of" and "behind" are these read from objects[1]'s side.
RELATIONS = ("next_to", "on", "left_of", "in_front_of")
COUNT_PROBABILITIES = (0.6, 0.25, 0.15)  # of 1, 2 and 3 instances in a group
MAX_INSTANCES = 4


# --------------------------------------------------------------------------- #
# Making a scene: counts, sizes, relation and a layout that shows the relation
# --------------------------------------------------------------------------- #


def make_scene(rng: np.random.Generator, setting: str, groups: Sequence[tuple[str, str]]) -> dict:
    """A scene dict with the given setting and one or two ``(noun, colour)`` groups.

    Each group's count (at most ``MAX_INSTANCES`` instances in all) and size, the relation
    (for two groups) and every instance's position are drawn from ``rng``.
    """
    objects = []
    for noun, colour in groups:
        count = 1 + int(np.searchsorted(np.cumsum(COUNT_PROBABILITIES), rng.random(), side="right"))
        count = min(count, MAX_INSTANCES - sum(obj["count"] for obj in objects))
        size = tuple(SIZE_RADIUS)[int(rng.random() * len(SIZE_RADIUS))]
        objects.append({"noun": noun, "shape": NOUN_SHAPES[noun], "colour": colour, "size": size, "count": count})
    relation = RELATIONS[int(rng.random() * len(RELATIONS))] if len(objects) == 2 else None
    for obj, (x, y) in zip(objects, _group_centres(rng, objects, relation)):
        radius = SIZE_RADIUS[obj["size"]]
        xs = x + (np.arange(obj["count"]) - (obj["count"] - 1) / 2) * 2.1 * radius  # a row of instances
        obj["positions"] = [[round(float(np.clip(x, radius, 1 - radius)), 3), round(y, 3)] for x in xs]
    return {"setting": setting, "relation": relation, "objects": objects}


def _group_centres(rng: np.random.Generator, objects: list[dict], relation: str | None) -> list[tuple[float, float]]:
    """The (x, y) centre of each group's row of instances, placed to show ``relation``."""
    radii = [SIZE_RADIUS[obj["size"]] for obj in objects]
    widths = [(obj["count"] - 1) * 2.1 * r + 2 * r for obj, r in zip(objects, radii)]
    base = 0.04 + 0.22 * rng.random()  # bottom edge of a group standing on the ground
    if relation is None:
        return [(widths[0] / 2 + (1 - widths[0]) * rng.random(), base + radii[0])]
    if relation in ("left_of", "next_to"):
        left, right = (0, 1) if relation == "left_of" or rng.random() < 0.5 else (1, 0)
        gap = 0.04 + 0.1 * rng.random()
        start = max(0.0, 1 - widths[left] - gap - widths[right]) * rng.random()
        centres = [(0.0, 0.0)] * 2
        centres[left] = (start + widths[left] / 2, base + radii[left])
        centres[right] = (start + widths[left] + gap + widths[right] / 2, base + radii[right])
        return centres
    if relation == "on":  # objects[0] stacked on objects[1]
        x = max(widths) / 2 + (1 - max(widths)) * rng.random()
        return [(x, base + 2 * radii[1] + radii[0]), (x, base + radii[1])]
    # in_front_of: objects[0] nearer the viewer, so lower in the picture
    x = 0.25 + 0.5 * rng.random()
    return [
        (x + 0.2 * (rng.random() - 0.5), 0.03 + radii[0] + 0.06 * rng.random()),
        (x, 0.26 + radii[1] + 0.06 * rng.random()),
    ]


# --------------------------------------------------------------------------- #
# Settings: the background and one decoration that tells settings apart
# --------------------------------------------------------------------------- #


def _draw_background(ax: Any, setting: str) -> None:
    sky, ground, decoration = SETTINGS[setting]
    ax.add_patch(patches.Rectangle((0, GROUND_Y), 1, 1 - GROUND_Y, color=sky, zorder=0))
    ax.add_patch(patches.Rectangle((0, 0), 1, GROUND_Y, color=ground, zorder=0))
    behind = dict(zorder=1, linewidth=0)
    if decoration == "sea":
        ax.add_patch(patches.Rectangle((0, GROUND_Y), 1, 0.08, color="#3a8fd0", **behind))
    elif decoration == "lake":
        ax.add_patch(patches.Ellipse((0.7, GROUND_Y - 0.04), 0.6, 0.12, color="#3a8fd0", **behind))
    elif decoration == "sun":
        ax.add_patch(patches.Circle((0.85, 0.85), 0.07, color="#ffd84d", **behind))
    elif decoration in ("trees", "forest"):
        xs = np.linspace(0.05, 0.95, 9 if decoration == "forest" else 3)
        for x in xs:
            ax.add_patch(patches.Rectangle((x - 0.01, GROUND_Y), 0.02, 0.08, color="#6b4423", **behind))
            ax.add_patch(patches.RegularPolygon((x, GROUND_Y + 0.15), 3, radius=0.09, color="#2f6b2a", **behind))
    elif decoration == "road":
        ax.add_patch(patches.Rectangle((0, 0.02), 1, 0.06, color="#4d4d4d", **behind))
        for x in np.arange(0.03, 1, 0.12):
            ax.add_patch(patches.Rectangle((x, 0.045), 0.06, 0.01, color="#f5f5f5", zorder=1))
    elif decoration == "tiles":
        for y in np.arange(GROUND_Y + 0.1, 1, 0.1):
            ax.plot([0, 1], [y, y], color="#d8d0bf", linewidth=0.8, zorder=1)
    elif decoration == "rug":
        ax.add_patch(patches.Ellipse((0.5, GROUND_Y / 2), 0.8, 0.25, color="#b03a2e", alpha=0.5, **behind))
    elif decoration == "snowflakes":
        for x, y in np.random.default_rng(0).random((25, 2)) * [1, 1 - GROUND_Y] + [0, GROUND_Y]:
            ax.add_patch(patches.Circle((x, y), 0.006, color="white", zorder=1))
    elif decoration == "window":
        ax.add_patch(patches.Rectangle((0.62, 0.6), 0.25, 0.25, facecolor="#bfe3f7", edgecolor="#555555", zorder=1))
    elif decoration == "flowers":
        for x, y in np.random.default_rng(1).random((18, 2)) * [1, GROUND_Y]:
            ax.add_patch(patches.Circle((x, y), 0.008, color="#e84393", zorder=1))


# --------------------------------------------------------------------------- #
# Shapes: one function per glyph, each drawing one instance centred on (x, y)
# with half-extent r. Every patch gets an outline so white objects show on snow.
# --------------------------------------------------------------------------- #

Style = Mapping[str, Any]


def _circle(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Circle((x, y), r, **style))


def _square(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Rectangle((x - r, y - r), 2 * r, 2 * r, **style))


def _triangle(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Polygon([(x - r, y - r), (x + r, y - r), (x, y + r)], **style))


def _star(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    ax.add_patch(patches.Polygon(np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], 1), **style))


def _ring(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Annulus((x, y), r, 0.35 * r, **style))


def _diamond(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Polygon([(x, y - r), (x + 0.7 * r, y), (x, y + r), (x - 0.7 * r, y)], **style))
    ax.plot([x, x + 0.3 * r], [y - r, y - 1.4 * r], color="#333333", linewidth=0.8)  # the kite's tail


def _cup(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(
        patches.Polygon(
            [(x - 0.7 * r, y + r), (x + 0.7 * r, y + r), (x + 0.5 * r, y - r), (x - 0.5 * r, y - r)], **style
        )
    )
    ax.add_patch(patches.Annulus((x + 0.75 * r, y + 0.1 * r), 0.35 * r, 0.12 * r, **style))


def _hat(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Rectangle((x - r, y - r), 2 * r, 0.3 * r, **style))
    ax.add_patch(patches.Rectangle((x - 0.55 * r, y - 0.7 * r), 1.1 * r, 1.3 * r, **style))


def _umbrella(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.plot([x, x], [y - r, y + 0.2 * r], color="#333333", linewidth=1.2)
    ax.add_patch(patches.Wedge((x, y + 0.2 * r), r, 0, 180, **style))


def _car(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Rectangle((x - r, y - 0.55 * r), 2 * r, 0.7 * r, **style))
    ax.add_patch(patches.Rectangle((x - 0.55 * r, y + 0.15 * r), 1.1 * r, 0.5 * r, **style))
    for wheel_x in (x - 0.55 * r, x + 0.55 * r):
        ax.add_patch(patches.Circle((wheel_x, y - 0.6 * r), 0.3 * r, color="#222222"))


def _bicycle(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    for wheel_x in (x - 0.55 * r, x + 0.55 * r):
        ax.add_patch(patches.Annulus((wheel_x, y - 0.45 * r), 0.45 * r, 0.08 * r, **style))
    colour = style["facecolor"]
    ax.plot(
        [x - 0.55 * r, x, x + 0.55 * r, x - 0.1 * r, x - 0.55 * r],
        [y - 0.45 * r, y + 0.3 * r, y - 0.45 * r, y - 0.45 * r, y - 0.45 * r],
        color=colour,
        linewidth=1.5,
    )


def _chair(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Rectangle((x - 0.6 * r, y - 0.1 * r), 1.2 * r, 0.2 * r, **style))  # seat
    ax.add_patch(patches.Rectangle((x + 0.45 * r, y - 0.1 * r), 0.15 * r, 1.1 * r, **style))  # back
    for leg_x in (x - 0.6 * r, x + 0.45 * r):
        ax.add_patch(patches.Rectangle((leg_x, y - r), 0.15 * r, 0.9 * r, **style))


def _book(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Rectangle((x - r, y - 0.35 * r), 2 * r, 0.7 * r, **style))
    ax.add_patch(patches.Rectangle((x - r, y - 0.2 * r), 0.2 * r, 0.4 * r, facecolor="#fafafa", edgecolor="none"))


def _clock(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Circle((x, y), r, **style))
    ax.add_patch(patches.Circle((x, y), 0.75 * r, facecolor="#fafafa", edgecolor="none"))
    ax.plot([x, x, x + 0.45 * r], [y + 0.6 * r, y, y], color="#222222", linewidth=1.0)


def _animal(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Ellipse((x, y), 1.6 * r, 0.9 * r, **style))  # body
    ax.add_patch(patches.Circle((x + 0.85 * r, y + 0.45 * r), 0.35 * r, **style))  # head
    for leg_x in (x - 0.55 * r, x - 0.3 * r, x + 0.3 * r, x + 0.55 * r):
        ax.add_patch(patches.Rectangle((leg_x - 0.06 * r, y - r), 0.12 * r, 0.65 * r, **style))


def _bird(ax: Any, x: float, y: float, r: float, style: Style) -> None:
    ax.add_patch(patches.Ellipse((x, y - 0.2 * r), 1.5 * r, 0.9 * r, **style))  # body
    ax.add_patch(patches.Circle((x + 0.6 * r, y + 0.4 * r), 0.35 * r, **style))  # head
    ax.add_patch(
        patches.Polygon(
            [(x + 0.9 * r, y + 0.5 * r), (x + 1.3 * r, y + 0.4 * r), (x + 0.9 * r, y + 0.3 * r)],
            facecolor="#f2a20c",
            edgecolor="none",
        )
    )


SHAPES: dict[str, Callable[[Any, float, float, float, Style], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "diamond": _diamond,
    "cup": _cup,
    "hat": _hat,
    "umbrella": _umbrella,
    "car": _car,
    "bicycle": _bicycle,
    "chair": _chair,
    "book": _book,
    "clock": _clock,
    "animal": _animal,
    "bird": _bird,
}


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #


def draw_scene(scene: Mapping[str, Any], ax: Any) -> None:
    """Draw one scene dict (format in the module docstring) on a matplotlib Axes.

    The Axes gets the unit square, equal aspect and no ticks; nothing is returned.
    Raises ``ValueError`` naming the field if the scene uses an unknown setting,
    shape, colour or size, or if an object's positions do not match its count.
    """
    setting = scene.get("setting")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {sorted(SETTINGS)}")
    objects = scene.get("objects")
    if not isinstance(objects, (list, tuple)) or not objects:
        raise ValueError(f"scene['objects'] must be a non-empty list, got {objects!r}")
    for obj in objects:
        for field, table in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZE_RADIUS)):
            if obj.get(field) not in table:
                raise ValueError(f"unknown object {field} {obj.get(field)!r}; expected one of {sorted(table)}")
        if len(obj.get("positions", ())) != obj.get("count"):
            raise ValueError(
                f"object {obj.get('noun')!r} has count {obj.get('count')} but {len(obj.get('positions', ()))} positions"
            )

    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    _draw_background(ax, setting)

    # Farther (higher) instances first so nearer ones overlap them, as in a photo.
    instances = [(obj, x, y) for obj in objects for x, y in obj["positions"]]
    for obj, x, y in sorted(instances, key=lambda instance: -instance[2]):
        style = {"facecolor": COLOURS[obj["colour"]], "edgecolor": "#333333", "linewidth": 0.8}
        SHAPES[obj["shape"]](ax, float(x), float(y), SIZE_RADIUS[obj["size"]], style)
