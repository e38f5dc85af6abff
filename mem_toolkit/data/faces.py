"""Synthetic faces: the embedded face case study, drawn deterministically from a seed.

Every person has stable identity traits (face shape and width, skin tone, hair colour, style and
length, eye colour, size and spacing, eyebrows, nose, mouth, ears, glasses, beard, moles,
freckles) and an invented name; every photo varies the pose (yaw, tilt, scale, position), the
expression (neutral, smile, open mouth, blink), the lighting, the colour balance, the clothes and
the background. Faces are drawn at twice the size and downsampled, as real photos are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from .dataset import CaptionDataset
from .identity import TEMPLATES, FaceData, IdentityPhotos, split_faces
from .names import pseudonyms

SKIN_TONES = ((255, 224, 196), (241, 194, 167), (228, 180, 140), (204, 146, 108), (172, 112, 80), (130, 86, 58),
              (98, 64, 44), (236, 204, 168))
HAIR_COLOURS = ((28, 24, 24), (62, 40, 28), (108, 70, 42), (142, 62, 36), (214, 184, 118), (186, 98, 44), (146, 146, 146),
                (222, 220, 214))
EYE_COLOURS = ((96, 58, 30), (48, 34, 26), (66, 116, 186), (70, 128, 80), (128, 106, 52), (118, 128, 140))
FRAME_COLOURS = ((20, 20, 20), (96, 58, 30), (170, 170, 178), (170, 30, 40), (40, 60, 150))
HAIR_STYLES = ("short", "buzz", "side part", "fringe", "bob", "long", "curly", "bun", "bald")
BEARDS = ("none", "stubble", "full", "moustache", "goatee")
GLASSES = ("none", "round", "square", "sunglasses")
EXPRESSIONS = ("neutral", "smile", "open")
BACKGROUNDS = ((196, 206, 220), (222, 214, 196), (150, 170, 150), (90, 96, 112), (200, 180, 190), (236, 236, 232),
               (120, 100, 80), (60, 70, 60), (170, 200, 215), (214, 196, 150))


@dataclass(frozen=True)
class FaceTraits:
    """What stays the same in every photo of one person (lengths in face half-widths / half-heights)."""

    width: float  # face half-width, in canvas units
    height_ratio: float  # half-height / half-width
    jaw: float  # superellipse exponent of the lower face: < 2 pointed chin, > 2 square jaw
    skin: tuple[int, int, int]
    hair_colour: tuple[int, int, int]
    hair_style: str
    hair_length: float  # how far long hair falls below the chin, in half-heights
    hairline: float  # height of the hairline above the face centre, in half-heights
    parting: float  # slope of the hairline: a side parting
    eye_colour: tuple[int, int, int]
    eye_spacing: float
    eye_size: float
    eye_height: float
    brow_thickness: float
    brow_slant: float
    brow_gap: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_height: float
    lip_colour: tuple[int, int, int]
    ear_size: float
    glasses: str
    frame_colour: tuple[int, int, int]
    beard: str
    mole: tuple[float, float] | None
    freckles: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PhotoConditions:
    """What changes from one photo to the next."""

    yaw: float  # -1..1: features shift sideways, one ear turns away
    tilt: float  # degrees
    scale: float
    shift: tuple[float, float]
    expression: str
    blink: bool
    light_angle: float
    light_strength: float
    brightness: float
    colour_cast: tuple[float, float, float]
    background: tuple[int, int, int]
    texture: str
    clothes: tuple[int, int, int]
    noise: float


def _jitter(rng: np.random.Generator, colour, spread: float) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(np.asarray(colour) + rng.normal(0, spread, 3), 0, 255))


def sample_traits(rng: np.random.Generator) -> FaceTraits:
    """Draw one person's identity traits."""
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 7)
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 10)
    lip = tuple(int(c) for c in np.clip(np.asarray(skin) * (0.72, 0.5, 0.5) + (40, 10, 10), 0, 255))
    mole = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.05, 0.6))) if rng.random() < 0.3 else None
    freckles = tuple((float(rng.uniform(-0.75, 0.75)), float(rng.uniform(0.0, 0.3))) for _ in range(10)) if rng.random() < 0.15 else ()
    return FaceTraits(
        width=float(rng.uniform(0.26, 0.32)), height_ratio=float(rng.uniform(1.18, 1.45)), jaw=float(rng.uniform(1.6, 3.4)),
        skin=skin, hair_colour=hair, hair_style=str(rng.choice(HAIR_STYLES, p=(0.17, 0.08, 0.12, 0.1, 0.11, 0.16, 0.1, 0.08, 0.08))),
        hair_length=float(rng.uniform(0.3, 1.4)), hairline=float(rng.uniform(0.5, 0.75)), parting=float(rng.uniform(-0.18, 0.18)),
        eye_colour=_jitter(rng, EYE_COLOURS[rng.integers(len(EYE_COLOURS))], 8), eye_spacing=float(rng.uniform(0.34, 0.5)),
        eye_size=float(rng.uniform(0.15, 0.23)), eye_height=float(rng.uniform(-0.12, 0.04)),
        brow_thickness=float(rng.uniform(0.035, 0.09)), brow_slant=float(rng.uniform(-0.3, 0.3)), brow_gap=float(rng.uniform(0.13, 0.22)),
        nose_length=float(rng.uniform(0.2, 0.36)), nose_width=float(rng.uniform(0.12, 0.24)),
        mouth_width=float(rng.uniform(0.28, 0.5)), mouth_height=float(rng.uniform(0.45, 0.6)), lip_colour=lip,
        ear_size=float(rng.uniform(0.14, 0.24)),
        glasses=str(rng.choice(GLASSES, p=(0.62, 0.15, 0.15, 0.08))), frame_colour=FRAME_COLOURS[rng.integers(len(FRAME_COLOURS))],
        beard=str(rng.choice(BEARDS, p=(0.6, 0.12, 0.1, 0.1, 0.08))), mole=mole, freckles=freckles,
    )


def sample_conditions(rng: np.random.Generator, variation: float = 1.0) -> PhotoConditions:
    """Draw the pose, expression, lighting and setting of one photo; `variation` scales how much they change."""
    v = variation
    return PhotoConditions(
        yaw=float(rng.uniform(-0.6, 0.6) * v), tilt=float(np.clip(rng.normal(0, 7), -16, 16) * v),
        scale=float(rng.uniform(0.84, 1.12) ** v), shift=(float(rng.uniform(-0.06, 0.06) * v), float(rng.uniform(-0.05, 0.05) * v)),
        expression=str(rng.choice(EXPRESSIONS, p=(0.4, 0.4, 0.2))) if v else "neutral", blink=bool(rng.random() < 0.08 * v),
        light_angle=float(rng.uniform(0, 2 * math.pi)), light_strength=float(rng.uniform(0.0, 0.55) * v),
        brightness=float(rng.uniform(0.8, 1.15) ** v), colour_cast=tuple(float(g) for g in 1 + rng.normal(0, 0.05 * v, 3)),
        background=_jitter(rng, BACKGROUNDS[rng.integers(len(BACKGROUNDS))], 12),
        texture=str(rng.choice(("plain", "gradient", "stripes", "blobs"))), clothes=tuple(int(c) for c in rng.integers(30, 226, 3)),
        noise=float(2 + 4 * v),
    )


class _Pen:
    """Draws in face coordinates (origin at the face centre, unit = canvas size), posed by tilt, scale and shift."""

    def __init__(self, image: Image.Image, photo: PhotoConditions) -> None:
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.size = image.size[0]
        self.centre = (0.5 + photo.shift[0], 0.47 + photo.shift[1])
        self.scale = photo.scale
        self.cos, self.sin = math.cos(math.radians(photo.tilt)), math.sin(math.radians(photo.tilt))

    def points(self, points) -> list[tuple[float, float]]:
        out = []
        for x, y in points:
            x, y = x * self.scale, y * self.scale
            out.append(((self.centre[0] + x * self.cos - y * self.sin) * self.size, (self.centre[1] + x * self.sin + y * self.cos) * self.size))
        return out

    def polygon(self, points, fill) -> None:
        self.draw.polygon(self.points(points), fill=fill)

    def line(self, points, fill, width: float) -> None:
        self.draw.line(self.points(points), fill=fill, width=max(1, round(width * self.scale * self.size)), joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill=None, outline=None, width: float = 0.0) -> None:
        ring = [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 28, endpoint=False)]
        if fill is not None:
            self.polygon(ring, fill)
        if outline is not None:
            self.line(ring + ring[:1], outline, width)


def _shade(colour, factor: float, alpha: int | None = None):
    rgb = tuple(int(np.clip(c * factor, 0, 255)) for c in colour)
    return rgb if alpha is None else rgb + (alpha,)


def _face_outline(w: float, h: float, jaw: float, n: int = 48) -> list[tuple[float, float]]:
    """Superellipse: a round forehead (exponent 2) over a jaw whose exponent sets pointed or square."""
    points = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        c, s = math.cos(t), math.sin(t)
        e = 2 / (jaw if s > 0 else 2.0)
        points.append((w * math.copysign(abs(c) ** e, c), h * math.copysign(abs(s) ** e, s)))
    return points


def _hair_cap(w: float, h: float, extent: float) -> list[tuple[float, float]]:
    """The top of the head, down to `extent` radians below the ears on both sides."""
    angles = np.linspace(math.pi - extent, 2 * math.pi + extent, 30)
    return [(1.08 * w * math.cos(t), -0.03 * h + 1.06 * h * math.sin(t)) for t in angles]


def _draw_hair_back(pen: _Pen, t: FaceTraits, w: float, h: float) -> None:
    colour = t.hair_colour
    style = t.hair_style
    if style in ("long", "bob"):
        length = h * (t.hair_length if style == "long" else 0.35)
        cap = _hair_cap(w * 1.06, h, 0.0)
        pen.polygon(cap + [(w * 1.25, length), (-w * 1.25, length)], colour)
    elif style == "curly":
        pen.ellipse(0, -0.1 * h, 1.2 * w, 1.0 * h, fill=colour)
        for t_ in np.linspace(math.pi * 0.8, math.pi * 2.2, 12):
            pen.ellipse(1.15 * w * math.cos(t_), -0.1 * h + 0.98 * h * math.sin(t_), 0.28 * w, 0.28 * w, fill=colour)
    elif style == "bun":
        pen.ellipse(0, -1.12 * h, 0.38 * w, 0.32 * w, fill=colour)
    if style not in ("bald", "buzz"):
        pen.polygon(_hair_cap(w, h, 0.35 if style != "short" else 0.2), colour)


def _draw_hair_front(pen: _Pen, t: FaceTraits, w: float, h: float) -> None:
    """Hair over the forehead, between the top of the head and the hairline."""
    if t.hair_style == "bald":
        return
    hairline = {"fringe": 0.3, "buzz": t.hairline + 0.08}.get(t.hair_style, t.hairline)
    droop = 0.15 if t.hair_style == "fringe" else 0.45
    parting = t.parting * (2.0 if t.hair_style == "side part" else 1.0)
    colour = t.hair_colour + ((150,) if t.hair_style == "buzz" else (255,))
    rx, ry = 1.08 * w, 1.06 * h
    xs = np.linspace(-rx * 0.999, rx * 0.999, 25)
    top = [-0.03 * h - ry * math.sqrt(1 - (x / rx) ** 2) for x in xs]
    bottom = [max(y0, h * (-hairline + droop * (x / w) ** 2 + parting * x / w)) for x, y0 in zip(xs, top)]
    pen.polygon(list(zip(xs, top)) + list(zip(xs[::-1], bottom[::-1])), colour)
    if t.hair_style == "curly":
        for x, y in zip(xs[2:-2:3], bottom[2:-2:3]):
            pen.ellipse(x, y, 0.12 * w, 0.1 * w, fill=t.hair_colour)


def _draw_eyes_and_brows(pen: _Pen, t: FaceTraits, p: PhotoConditions, w: float, h: float, turn: float) -> None:
    size = t.eye_size * w
    y = t.eye_height * h
    brow = _shade(t.hair_colour, 0.8) if t.hair_style != "bald" else _shade(t.skin, 0.5)
    brow_lift = 0.04 * h if p.expression == "open" else 0.0  # surprise raises the eyebrows
    for side in (-1, 1):
        cx = side * t.eye_spacing * w + turn * 0.8
        squeeze = 1 - 0.35 * max(0.0, side * p.yaw)  # the eye turning away looks narrower
        if p.blink:
            pen.line([(cx - size * squeeze, y), (cx + size * squeeze, y)], _shade(t.skin, 0.5), 0.012)
        else:
            pen.ellipse(cx, y, size * squeeze, size * 0.55, fill=(245, 245, 240))
            iris = cx + p.yaw * size * 0.35
            pen.ellipse(iris, y, size * 0.5, size * 0.5, fill=t.eye_colour)
            pen.ellipse(iris, y, size * 0.22, size * 0.22, fill=(15, 15, 15))
            pen.line([(cx - size * squeeze, y - size * 0.3), (cx, y - size * 0.58), (cx + size * squeeze, y - size * 0.3)], _shade(t.skin, 0.45), 0.008)
        by = y - t.brow_gap * h - brow_lift
        inner, outer = cx - side * size * 0.9, cx + side * size * 1.2
        slant = t.brow_slant * size
        pen.line([(inner, by + slant), ((inner + outer) / 2, by - size * 0.15), (outer, by - slant * 0.3)], brow, t.brow_thickness * w)


def _draw_mouth(pen: _Pen, t: FaceTraits, p: PhotoConditions, w: float, h: float, turn: float) -> None:
    cx, cy, half = turn * 0.9, t.mouth_height * h, t.mouth_width * w
    if p.expression == "smile":
        upper = [(cx + x, cy - 0.012 * h * (1 - (x / half) ** 2) - 0.04 * h * (x / half) ** 2) for x in np.linspace(-half, half, 9)]
        lower = [(cx + x, cy + 0.09 * h * (1 - (x / half) ** 2)) for x in np.linspace(half, -half, 9)]
        pen.polygon(upper + lower, (250, 248, 240))
        pen.line(upper, t.lip_colour, 0.012)
        pen.line(lower + lower[:1], t.lip_colour, 0.016)
    elif p.expression == "open":
        pen.ellipse(cx, cy + 0.02 * h, half * 0.55, 0.09 * h, fill=(60, 20, 25), outline=t.lip_colour, width=0.014)
    else:
        pen.line([(cx - half, cy), (cx, cy + 0.012 * h), (cx + half, cy)], t.lip_colour, 0.02)


def _draw_beard(pen: _Pen, t: FaceTraits, w: float, h: float, outline) -> None:
    if t.beard == "none":
        return
    mouth_y = t.mouth_height * h
    if t.beard == "moustache":
        half = t.mouth_width * w * 1.05
        pen.polygon([(-half, mouth_y - 0.03 * h), (0, mouth_y - 0.11 * h), (half, mouth_y - 0.03 * h), (0, mouth_y - 0.05 * h)], t.hair_colour)
        return
    if t.beard == "goatee":
        pen.ellipse(0, mouth_y + 0.27 * h, t.mouth_width * w * 0.75, 0.2 * h, fill=t.hair_colour + (235,))
        return
    lower = [(x, y) for x, y in outline if y > -0.05 * h]
    lower.sort(key=lambda q: math.atan2(q[1], q[0]))
    alpha = 255 if t.beard == "full" else 95
    pen.polygon(lower + [(-0.55 * w, -0.05 * h), (0, mouth_y - 0.12 * h), (0.55 * w, -0.05 * h)], t.hair_colour + (alpha,))
    pen.line([(-t.mouth_width * w, mouth_y), (t.mouth_width * w, mouth_y)], t.lip_colour, 0.02)


def _draw_glasses(pen: _Pen, t: FaceTraits, w: float, h: float, turn: float) -> None:
    if t.glasses == "none":
        return
    y = t.eye_height * h
    rx, ry = t.eye_size * w * 1.55, t.eye_size * w * 1.15
    for side in (-1, 1):
        cx = side * t.eye_spacing * w + turn * 0.8
        if t.glasses == "square":
            box = [(cx - rx, y - ry), (cx + rx, y - ry), (cx + rx, y + ry), (cx - rx, y + ry), (cx - rx, y - ry)]
            pen.line(box, t.frame_colour, 0.012)
        elif t.glasses == "round":
            pen.ellipse(cx, y, rx, ry, outline=t.frame_colour, width=0.012)
        else:
            pen.ellipse(cx, y, rx, ry, fill=(20, 22, 26, 235))
        pen.line([(cx + side * rx, y), (side * w * 1.02, y - ry * 0.3)], t.frame_colour, 0.01)
    pen.line([(-t.eye_spacing * w + rx + turn * 0.8, y), (t.eye_spacing * w - rx + turn * 0.8, y)], t.frame_colour, 0.012)


def _draw_background(image: Image.Image, p: PhotoConditions, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(image, "RGBA")
    size = image.size[0]
    shade = _shade(p.background, float(rng.uniform(0.75, 0.9)))
    if p.texture == "gradient":
        for y in range(0, size, 2):
            f = y / size
            draw.rectangle([0, y, size, y + 2], fill=tuple(int(a * (1 - f) + b * f) for a, b in zip(p.background, shade)))
    elif p.texture == "stripes":
        step = int(size * rng.uniform(0.1, 0.2))
        vertical = rng.random() < 0.5
        for offset in range(0, size, 2 * step):
            draw.rectangle([offset, 0, offset + step, size] if vertical else [0, offset, size, offset + step], fill=shade)
    elif p.texture == "blobs":
        for _ in range(6):
            x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.08, 0.25) * size
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, p.background, 35) + (170,))


def render_face(traits: FaceTraits, photo: PhotoConditions, image_size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw one photo of a person as uint8 (image_size, image_size, 3)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    canvas = image_size * 2
    image = Image.new("RGB", (canvas, canvas), photo.background)
    _draw_background(image, photo, rng)
    pen = _Pen(image, photo)
    t = traits
    w, h = t.width, t.width * t.height_ratio
    turn = photo.yaw * 0.22 * w  # features slide toward the side the head turns to
    _draw_hair_back(pen, t, w, h)
    pen.polygon([(-0.42 * w, 0.5 * h), (0.42 * w, 0.5 * h), (0.48 * w, 1.5 * h), (-0.48 * w, 1.5 * h)], _shade(t.skin, 0.85))
    pen.ellipse(0, 1.95 * h, 2.1 * w, 0.72 * h, fill=photo.clothes)
    pen.polygon([(-0.4 * w, 1.22 * h), (0.4 * w, 1.22 * h), (0, 1.5 * h)], _shade(t.skin, 0.85))
    for side in (-1, 1):
        away = max(0.0, side * photo.yaw)
        pen.ellipse(side * (0.98 * w - 0.15 * w * away), t.eye_height * h + 0.1 * h, t.ear_size * w * 0.5 * (1 - 0.6 * away), t.ear_size * h,
                    fill=_shade(t.skin, 0.93))
    outline = _face_outline(w, h, t.jaw)
    pen.polygon(outline, t.skin)
    for fx, fy in t.freckles:
        pen.ellipse(fx * w + turn, fy * h, 0.025 * w, 0.025 * w, fill=_shade(t.skin, 0.78))
    if t.mole is not None:
        pen.ellipse(t.mole[0] * w + turn, t.mole[1] * h, 0.05 * w, 0.05 * w, fill=_shade(t.skin, 0.45))
    _draw_eyes_and_brows(pen, t, photo, w, h, turn)
    nose_x = turn * 1.3
    top, tip = t.eye_height * h + 0.08 * h, t.eye_height * h + t.nose_length * h + 0.12 * h
    half = t.nose_width * w
    pen.polygon([(nose_x - 0.04 * w, top), (nose_x + half, tip), (nose_x - half * 0.9, tip)], _shade(t.skin, 0.88))
    pen.line([(nose_x - half * 0.8, tip), (nose_x + half * 0.8, tip)], _shade(t.skin, 0.65), 0.012)
    _draw_beard(pen, t, w, h, outline)
    _draw_mouth(pen, t, photo, w, h, turn)
    _draw_hair_front(pen, t, w, h)
    _draw_glasses(pen, t, w, h, turn)
    image = image.filter(ImageFilter.GaussianBlur(0.7)).resize((image_size, image_size), Image.Resampling.BOX)
    return _light(np.asarray(image, dtype=np.float64), photo, rng)


def _light(array: np.ndarray, p: PhotoConditions, rng: np.random.Generator) -> np.ndarray:
    """Directional light, exposure, white balance and sensor noise."""
    size = array.shape[0]
    axis = np.linspace(-1, 1, size)
    ramp = math.cos(p.light_angle) * axis[None, :] + math.sin(p.light_angle) * axis[:, None]
    array = array * (p.brightness * (1 + p.light_strength * ramp / 1.4))[..., None] * np.asarray(p.colour_cast)
    array += rng.normal(0, p.noise, array.shape)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def generate_faces(n_people: int = 50, photos_per_person: int = 10, image_size: int = 64, seed: int = 0, variation: float = 1.0,
                   progress: bool = False) -> IdentityPhotos:
    """Every photo of `n_people` invented people (`photos_per_person` each), before any split.

    People are labelled by their pseudonym with underscores (`Aldric_Ashgrove`), photos keyed
    `label/NN.png`: the layout `write_identity_folder` writes. Person p's traits and photos depend
    only on (seed, p), so asking for more people or photos keeps the earlier ones.
    """
    if n_people < 1 or photos_per_person < 1:
        raise ValueError("need at least one person and one photo per person")
    names = pseudonyms(n_people, seed)
    labels = [name.replace(" ", "_") for name in names]
    pixels = np.zeros((n_people * photos_per_person, image_size, image_size, 3), dtype=np.uint8)
    keys, identity = [], []
    for person in tqdm(range(n_people), desc="drawing faces", disable=not progress, unit="person"):
        traits = sample_traits(np.random.default_rng([seed, 1, person]))
        for k in range(photos_per_person):
            rng = np.random.default_rng([seed, 2, person, k])
            pixels[len(keys)] = render_face(traits, sample_conditions(rng, variation), image_size, rng)
            keys.append(f"{labels[person]}/{k:02d}.png")
            identity.append(person)
    dataset = CaptionDataset([labels[p] for p in identity], np.arange(len(keys)), keys, image_size, image_array=pixels, name="faces")
    order = np.argsort(labels)
    rank = np.empty(n_people, dtype=np.int64)
    rank[order] = np.arange(n_people)
    return IdentityPhotos(dataset, rank[np.asarray(identity)], sorted(labels), keys, f"synthetic faces (seed {seed})")


def make_faces(n_people: int = 50, photos_per_person: int = 10, image_size: int = 64, seed: int = 0, *, variation: float = 1.0,
               templates=TEMPLATES, captions_per_image: int = 1, progress: bool = False) -> FaceData:
    """The embedded face case study: synthetic people with invented names, one test photo each."""
    if photos_per_person < 2:
        raise ValueError("the split needs at least two photos per person")
    photos = generate_faces(n_people, photos_per_person, image_size, seed, variation, progress)
    return split_faces(photos, seed=seed, rename=False, templates=templates, captions_per_image=captions_per_image)
