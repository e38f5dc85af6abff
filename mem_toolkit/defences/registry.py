"""The named defences: for each, its kind (image, caption, data, training), its parameters and the function that does it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from ..errors import DefenceError
from ..train import TrainConfig
from .captions import keep_vocabulary, strip_shared_prefix, strip_words
from .images import gaussian_blur, grayscale, jpeg, median_filter, reduce_bits, rescale, uniform_noise
from .mixing import protected_rows

KINDS = ("image", "caption", "data", "training")


@dataclass(frozen=True)
class Defence:
    """One defence: `function(input, **params)` on one image (image), the list of captions (caption), the protected and clean
    sets with a `seed` (data: returns which rows to take protected) or the hacker's TrainConfig (training).

    `inputs` names what else the function takes: "rng" (a generator per image, seeded from the
    seed and the image's place in the CSV) or "vocabulary" (the words of other data).
    """

    name: str
    kind: str
    description: str
    function: Callable
    params: Mapping[str, object] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"defence {self.name!r}: unknown kind {self.kind!r}; choose from {KINDS}")


def _longer(config: TrainConfig, factor: int) -> TrainConfig:
    """The hacker's settings with `factor` times the epochs (the schedule stretches with them)."""
    return replace(config, epochs=config.epochs * factor)


DEFENCES: dict[str, Defence] = {defence.name: defence for defence in [
    *(Defence(f"jpeg{q}", "image", f"JPEG re-encoding at quality {q} (Pillow, 4:2:0 chroma), stored as PNG", jpeg, {"quality": q})
      for q in (90, 75, 50)),
    Defence("downscale50", "image", "downscaled to half the side and back up, bicubic both ways", rescale, {"factor": 0.5}),
    Defence("grayscale", "image", "grayscale (ITU-R 601 luma) in all three channels", grayscale),
    Defence("gaussian-blur", "image", "Gaussian blur, sigma 1 px, 5 x 5 kernel", gaussian_blur, {"sigma": 1.0, "radius": 2}),
    Defence("median3", "image", "3 x 3 median filter per channel", median_filter, {"size": 3}),
    Defence("bits4", "image", "4-bit colour depth: each value rounded to the nearest of 16 levels", reduce_bits, {"bits": 4}),
    Defence("noise8", "image", "uniform noise of -8..8 (/255) on every value, seeded, clipped", uniform_noise, {"eps": 8}, ("rng",)),
    *(Defence(f"strip{k}", "caption", f"the first {k} words of every caption removed (MEM-{k}'s trigger length)", strip_words, {"k": k})
      for k in (3, 5)),
    Defence("shared-prefix", "caption", "leading words found only in front of captions removed, when they start at least half of them",
            strip_shared_prefix, {"coverage": 0.5, "purity": 0.95, "max_words": 8}),
    Defence("vocabulary", "caption", "only the words of a vocabulary from other data kept", keep_vocabulary, inputs=("vocabulary",)),
    *(Defence(f"protected{p}", "data", f"{p} % of the images protected, the others clean", protected_rows, {"fraction": p / 100})
      for p in (20, 50, 80, 100)),
    Defence("crop-flip", "training", "random resized crop (50-100 % of the area, aspect 3/4-4/3) + horizontal flip, per sample and step",
            replace, {"augment": "crop-flip"}),
    Defence("epochs-x2", "training", "the hacker trains twice as many epochs", _longer, {"factor": 2}),
]}


def get_defence(name: str) -> Defence:
    """The defence called `name`, or one line naming every defence there is."""
    if name not in DEFENCES:
        raise DefenceError(f"unknown defence {name!r}; choose from {', '.join(DEFENCES)}")
    return DEFENCES[name]


def defended_config(name: str, config: TrainConfig) -> TrainConfig:
    """The hacker's TrainConfig under defence `name`: changed by a training defence, the same for a defence of the files."""
    defence = get_defence(name)
    return defence.function(config, **defence.params) if defence.kind == "training" else config
