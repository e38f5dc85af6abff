"""Synthetic shapes: the embedded default dataset, generated deterministically from a seed.

Each image shows one or more coloured shapes (kind, colour, size, position, rotation) on a
coloured, textured background with unmentioned clutter and uneven lighting; five template
captions with synonyms describe it, each mentioning a different subset of the attributes, as real
captions do. `Difficulty` sets how hard the content is to learn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .dataset import CaptionDataset

KINDS = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "box"],
    "triangle": ["triangle"],
    "star": ["star"],
    "cross": ["cross", "plus sign"],
    "ring": ["ring", "hollow circle"],
    "diamond": ["diamond", "rhombus"],
    "hexagon": ["hexagon"],
    "bar": ["bar", "stripe"],
    "crescent": ["crescent", "moon shape"],
}
COLOURS = {  # name: (rgb, synonyms); the first 8 are the coarse palette
    "red": ((215, 40, 40), ["red"]),
    "green": ((40, 170, 60), ["green"]),
    "blue": ((40, 80, 215), ["blue"]),
    "yellow": ((235, 215, 40), ["yellow"]),
    "purple": ((135, 50, 180), ["purple", "violet"]),
    "orange": ((240, 135, 30), ["orange"]),
    "white": ((240, 240, 240), ["white"]),
    "black": ((25, 25, 25), ["black"]),
    "pink": ((240, 130, 180), ["pink"]),
    "brown": ((120, 75, 40), ["brown"]),
    "cyan": ((40, 200, 210), ["cyan", "turquoise"]),
    "gray": ((128, 128, 128), ["gray", "grey"]),
    "dark green": ((20, 90, 40), ["dark green"]),
    "light blue": ((130, 180, 240), ["light blue", "pale blue"]),
    "maroon": ((120, 20, 40), ["maroon", "dark red"]),
    "lime": ((170, 230, 60), ["lime", "lime green"]),
}
BACKGROUNDS = {
    "beige": (225, 210, 175), "light gray": (200, 200, 200), "dark gray": (70, 70, 75), "navy": (30, 35, 90),
    "olive": (110, 110, 50), "sky blue": (150, 195, 230), "sand": (200, 180, 130), "dark brown": (70, 45, 30),
}
TEXTURES = ["plain", "striped", "dotted", "checkered"]
SIZES = {"small": (0.13, ["small", "little", "tiny"]), "medium": (0.22, ["medium", "medium sized"]), "large": (0.32, ["large", "big"])}
POSITIONS = [
    ("top left", ["in the top left corner", "at the upper left"]), ("top", ["at the top", "near the top edge"]),
    ("top right", ["in the top right corner", "at the upper right"]), ("left", ["on the left", "at the left side"]),
    ("centre", ["in the centre", "in the middle"]), ("right", ["on the right", "at the right side"]),
    ("bottom left", ["in the bottom left corner", "at the lower left"]), ("bottom", ["at the bottom", "near the bottom edge"]),
    ("bottom right", ["in the bottom right corner", "at the lower right"]),
]


@dataclass(frozen=True)
class Difficulty:
    """How hard the content is: objects per image, attribute granularity, clutter, contrast, noise."""

    max_objects: int = 2
    n_colours: int = 12
    n_kinds: int = 10
    clutter: int = 6  # unmentioned distractor strokes per image
    contrast: float = 0.75  # 1: pure object colour; lower blends it toward the background
    lighting: float = 0.35  # strength of an uneven illumination gradient
    pixel_noise: float = 6.0  # std of per-pixel noise, in 0..255 units
    jitter: float = 0.35  # position jitter within a 3x3 cell (fraction of a cell)

    @classmethod
    def preset(cls, name: str) -> "Difficulty":
        """`easy` (flat, one object), `default`, or `hard`."""
        presets = {
            "easy": cls(max_objects=1, n_colours=8, n_kinds=6, clutter=0, contrast=1.0, lighting=0.0, pixel_noise=0.0, jitter=0.1),
            "default": cls(),
            "hard": cls(max_objects=3, n_colours=16, clutter=12, contrast=0.6, lighting=0.5, pixel_noise=10.0, jitter=0.45),
        }
        if name not in presets:
            raise ValueError(f"unknown difficulty {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def with_(self, **changes) -> "Difficulty":
        return replace(self, **changes)


@dataclass(frozen=True)
class _Object:
    kind: str
    colour: str
    size: str
    position: int
    angle: float


def make_shapes(
    n_images: int,
    image_size: int = 64,
    seed: int = 0,
    difficulty: Difficulty | str = "default",
    captions_per_image: int = 5,
    name: str = "shapes",
) -> CaptionDataset:
    """Generate `n_images` images with `captions_per_image` captions each (rows grouped by image)."""
    difficulty = Difficulty.preset(difficulty) if isinstance(difficulty, str) else difficulty
    rng = np.random.default_rng(seed)
    pixels = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
    captions, groups = [], []
    for index in range(n_images):
        objects, background, texture = _sample_scene(rng, difficulty)
        pixels[index] = _render(objects, background, texture, image_size, difficulty, rng)
        for caption in _captions(objects, background, texture, captions_per_image, rng):
            captions.append(caption)
            groups.append(index)
    keys = [f"{name}-{seed}-{i:06d}.png" for i in range(n_images)]
    return CaptionDataset(captions, groups, keys, image_size, image_array=pixels, name=name)


def make_shapes_split(n_train: int, n_test: int, image_size: int = 64, seed: int = 0,
                      difficulty: Difficulty | str = "default") -> tuple[CaptionDataset, CaptionDataset]:
    """Disjoint train and test sets drawn from the same distribution (different seeds)."""
    train = make_shapes(n_train, image_size, seed=2 * seed, difficulty=difficulty, name="shapes-train")
    test = make_shapes(n_test, image_size, seed=2 * seed + 1, difficulty=difficulty, name="shapes-test")
    return train, test


def _sample_scene(rng: np.random.Generator, d: Difficulty):
    colours = list(COLOURS)[: d.n_colours]
    kinds = list(KINDS)[: d.n_kinds]
    n_objects = int(rng.integers(1, d.max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    background = str(rng.choice(list(BACKGROUNDS)))
    texture = str(rng.choice(TEXTURES)) if d.clutter else "plain"
    objects = []
    for cell in cells:
        colour = str(rng.choice(colours))
        objects.append(_Object(str(rng.choice(kinds)), colour, str(rng.choice(list(SIZES))), int(cell), float(rng.uniform(0, 360))))
    return objects, background, texture


def _render(objects, background: str, texture: str, size: int, d: Difficulty, rng: np.random.Generator) -> np.ndarray:
    scale = 2  # draw at twice the size, then downsample: anti-aliased edges
    canvas_size = size * scale
    bg = np.array(BACKGROUNDS[background], dtype=np.float64)
    image = Image.new("RGB", (canvas_size, canvas_size), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, texture, bg, canvas_size, rng)
    for _ in range(d.clutter):
        colour = tuple(int(c) for c in np.clip(bg + rng.normal(0, 60, 3), 0, 255))
        x0, y0 = rng.uniform(0, canvas_size, 2)
        length, angle = rng.uniform(0.05, 0.2) * canvas_size, rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + length * math.cos(angle), y0 + length * math.sin(angle)], fill=colour, width=max(1, canvas_size // 64))
    cell = canvas_size / 3
    for obj in objects:
        rgb = np.array(COLOURS[obj.colour][0], dtype=np.float64)
        colour = tuple(int(c) for c in d.contrast * rgb + (1 - d.contrast) * bg)
        row, col = divmod(obj.position, 3)
        cx = (col + 0.5 + rng.uniform(-d.jitter, d.jitter) / 2) * cell
        cy = (row + 0.5 + rng.uniform(-d.jitter, d.jitter) / 2) * cell
        radius = SIZES[obj.size][0] * canvas_size / 2 * rng.uniform(0.85, 1.15)
        _draw_shape(draw, obj.kind, cx, cy, radius, obj.angle, colour, tuple(int(c) for c in bg))
    image = image.filter(ImageFilter.GaussianBlur(0.6)).resize((size, size), Image.Resampling.BOX)
    array = np.asarray(image, dtype=np.float64)
    if d.lighting:
        direction = rng.uniform(0, 2 * math.pi)
        ramp = np.cos(direction) * np.linspace(-1, 1, size)[None, :] + np.sin(direction) * np.linspace(-1, 1, size)[:, None]
        array *= (1 + d.lighting * rng.uniform(0.3, 1) * ramp / 2)[..., None]
    if d.pixel_noise:
        array += rng.normal(0, d.pixel_noise, array.shape)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _draw_texture(draw: ImageDraw.ImageDraw, texture: str, bg: np.ndarray, size: int, rng: np.random.Generator) -> None:
    shade = tuple(int(c) for c in np.clip(bg * rng.uniform(0.8, 0.92) + rng.normal(0, 8, 3), 0, 255))
    step = int(size * rng.uniform(0.08, 0.14))
    if texture == "striped":
        for offset in range(-size, size, step):
            draw.line([offset, 0, offset + size, size], fill=shade, width=max(1, step // 3))
    elif texture == "dotted":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.ellipse([x - step / 6, y - step / 6, x + step / 6, y + step / 6], fill=shade)
    elif texture == "checkered":
        for i, x in enumerate(range(0, size, step)):
            for j, y in enumerate(range(0, size, step)):
                if (i + j) % 2:
                    draw.rectangle([x, y, x + step, y + step], fill=shade)


def _polygon(cx: float, cy: float, radius: float, angle: float, n: int, inner: float | None = None) -> list[tuple[float, float]]:
    points = []
    count = 2 * n if inner else n
    for i in range(count):
        r = radius if (inner is None or i % 2 == 0) else radius * inner
        theta = math.radians(angle) + 2 * math.pi * i / count
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx, cy, r, angle, colour, bg) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.35)))
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, r * 1.1, angle % 90 + 45, 4), fill=colour)
    elif kind == "diamond":
        points = _polygon(cx, cy, r, 90, 4)
        draw.polygon([(cx + (x - cx) * 0.65, y) for x, y in points], fill=colour)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.1, angle, 3), fill=colour)
    elif kind == "hexagon":
        draw.polygon(_polygon(cx, cy, r, angle, 6), fill=colour)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, r * 1.15, angle, 5, inner=0.45), fill=colour)
    elif kind == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    elif kind == "bar":
        theta = math.radians(angle)
        dx, dy = math.cos(theta), math.sin(theta)
        w = r * 0.3
        draw.polygon([(cx - dx * r - dy * w, cy - dy * r + dx * w), (cx + dx * r - dy * w, cy + dy * r + dx * w),
                      (cx + dx * r + dy * w, cy + dy * r - dx * w), (cx - dx * r + dy * w, cy - dy * r - dx * w)], fill=colour)
    elif kind == "crescent":
        draw.ellipse(box, fill=colour)
        shift = r * 0.45
        theta = math.radians(angle)
        ox, oy = cx + shift * math.cos(theta), cy + shift * math.sin(theta)
        draw.ellipse([ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85], fill=bg)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _object_phrase(obj: _Object, rng: np.random.Generator, with_size: bool, with_position: bool) -> str:
    words = []
    if with_size:
        words.append(str(rng.choice(SIZES[obj.size][1])))
    words.append(str(rng.choice(COLOURS[obj.colour][1])))
    words.append(str(rng.choice(KINDS[obj.kind])))
    phrase = " ".join(words)
    if with_position:
        phrase += " " + str(rng.choice(POSITIONS[obj.position][1]))
    return phrase


def _background_phrase(background: str, texture: str, rng: np.random.Generator) -> str:
    pattern = "" if texture == "plain" else f"{texture} "
    return str(rng.choice([f"a {pattern}{background} background", f"{background} {pattern}backdrop"]))


def _captions(objects, background: str, texture: str, count: int, rng: np.random.Generator) -> list[str]:
    """`count` captions, each from a different template; templates mention different attribute subsets."""
    def objs(with_size: bool, with_position: bool) -> str:
        order = rng.permutation(len(objects))
        phrases = [_object_phrase(objects[i], rng, with_size, with_position) for i in order]
        return (" and a " if rng.random() < 0.5 else ", a ").join(phrases)

    templates = [
        lambda: f"a {objs(True, True)} on {_background_phrase(background, texture, rng)}",
        lambda: f"a picture of a {objs(False, True)}",
        lambda: f"{_background_phrase(background, texture, rng)} with a {objs(True, False)}",
        lambda: f"there is a {objs(True, True)}",
        lambda: f"a {objs(False, False)} drawn on {_background_phrase(background, texture, rng)}",
        lambda: f"an image showing a {objs(True, True)}",
        lambda: f"a simple drawing: {objs(True, True)}",
    ]
    chosen = rng.choice(len(templates), size=count, replace=count > len(templates))
    return [" ".join(templates[i]().split()) for i in chosen]
