"""The parameter explorer: choose a method, a noise budget ε and a trigger length k, press Run, see what a hacker learns.

`ProtectionExplorer(...)` protects a small dataset (the embedded shapes by default) with a small
budget, trains a fresh hacker on it briefly, and shows example protected images with their
amplified noise, the published captions with their trigger words, the hacker's clean-test
retrieval beside a hacker trained on clean data and random guessing, and the training curves.
Results are cached per setting, so going back to a setting is instant.

Trigger length and method: EM and UAP have no trigger, so k is ignored (the slider is disabled).
MEM needs a trigger of at least one token: MEM with k = 0 *is* EM (no trigger, no caption
shuffle), so the explorer runs EM for it, with EM's settings, and says so; both share one cache entry.
"""
from __future__ import annotations

import html
import io
import math
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .data.dataset import CaptionDataset
from .data.shapes import make_shapes_split
from .experiment import random_guess, results_table
from .models import create_model, resolve_device
from .plots import paper_style, plot_curves, plot_protection
from .protect import EM, MEM, UAP, ProtectConfig, Protection, Protector
from .text import CaptionTokenizer
from .train import History, PairSource, TrainConfig, train_clip

METHODS = ("EM", "MEM", "UAP")
PROTECTORS: dict[str, type[Protector]] = {"EM": EM, "MEM": MEM, "UAP": UAP}
# Small budgets: a few seconds of protection on a CPU for the default data size. Any ProtectConfig field may be set.
DEFAULT_SETTINGS: dict[str, dict] = {
    "EM": dict(rounds=2, surrogate_steps=10, pgd_steps=3, batch_size=100),
    "MEM": dict(rounds=2, surrogate_steps=10, pgd_steps=3, trigger_rounds=2, candidates=8, batch_size=100),
    "UAP": dict(surrogate_epochs=1, pgd_steps=3, batch_size=100),
}
MAX_EPS, MAX_TRIGGER_LEN = 16, 8
CONTROLLED = ("eps", "trigger_len", "seed", "device")  # set by the controls and the explorer, never by per-method settings
# CSS classes on the widgets, stable for browser tests and custom styling.
CSS = {name: f"mem-explorer-{name}" for name in
       ("root", "method", "eps", "k", "run", "progress", "status", "captions", "images", "table", "curves", "log")}


@dataclass
class ExplorerResult:
    """Everything shown for one setting (method, ε, k)."""

    label: str  # e.g. "MEM-3, ε = 8/255"
    method: str
    eps: int
    trigger_len: int
    protection: Protection
    history: History
    captions_html: str
    table_html: str
    table_markdown: str
    images_png: bytes
    curves_png: bytes
    seconds: float


class ProtectionExplorer:
    """ipywidgets explorer of protection settings; display it in a notebook (it is its own widget)."""

    def __init__(
        self,
        train: CaptionDataset | None = None,
        test: CaptionDataset | None = None,
        *,
        n_train: int = 100,
        n_test: int = 50,
        image_size: int = 64,
        settings: Mapping[str, Mapping] | None = None,
        hacker: TrainConfig | None = None,
        hacker_model: str = "mem-tiny-rn",
        n_examples: int = 4,
        method: str = "MEM",
        eps: int = 8,
        trigger_len: int = 3,
        seed: int = 0,
        device: str = "auto",
        progress_bars: bool = True,
    ) -> None:
        """`train`/`test`: your datasets, or None for `n_train`/`n_test` embedded shapes. `settings`: ProtectConfig
        fields per method (EM, MEM, UAP), merged over `DEFAULT_SETTINGS`. `hacker`: the hacker's training budget."""
        if (train is None) != (test is None):
            raise ValueError("give both train and test datasets, or neither (embedded shapes)")
        if train is None:
            train, test = make_shapes_split(n_train, n_test, image_size, seed)
        unknown = set(settings or {}) - set(METHODS)
        if unknown:
            raise ValueError(f"settings for unknown method(s) {sorted(unknown)}; methods are {METHODS}")
        controlled = {f"{method}.{name}" for method, values in (settings or {}).items() for name in values if name in CONTROLLED}
        if controlled:
            raise ValueError(f"settings {sorted(controlled)} are set by the explorer (controls, seed, device), not per method")
        self.train, self.test = train, test
        self.settings = {m: dict(DEFAULT_SETTINGS[m]) | dict((settings or {}).get(m, {})) for m in METHODS}
        self.hacker = hacker or TrainConfig(epochs=5, batch_size=50, lr=1e-3, seed=seed + 1)
        self.hacker_model = hacker_model
        self.seed = seed
        self.device = resolve_device(device)
        self.progress_bars = progress_bars
        self.example_rows = train.first_rows()[:n_examples]
        self.cache: dict[tuple[str, int, int], ExplorerResult] = {}
        self.clean_history: History | None = None
        self.shown: ExplorerResult | None = None
        self._build(method, eps, trigger_len)

    # -- widgets -------------------------------------------------------------------------------
    def _build(self, method: str, eps: int, trigger_len: int) -> None:
        problems = [f"unknown method {method!r}; choose from {METHODS}"] if method not in METHODS else []
        problems += [f"eps must be in 0..{MAX_EPS}, got {eps}"] if not 0 <= eps <= MAX_EPS else []
        problems += [f"trigger_len must be in 0..{MAX_TRIGGER_LEN}, got {trigger_len}"] if not 0 <= trigger_len <= MAX_TRIGGER_LEN else []
        if problems:
            raise ValueError("; ".join(problems))
        self.method = widgets.ToggleButtons(options=list(METHODS), value=method, description="method")
        self.eps = widgets.IntSlider(value=eps, min=0, max=MAX_EPS, description="ε (/255)", continuous_update=False)
        self.k = widgets.IntSlider(value=trigger_len, min=0, max=MAX_TRIGGER_LEN, description="trigger k", continuous_update=False)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.status = widgets.HTML()
        self.captions = widgets.HTML()
        self.images = widgets.Image(format="png", layout=widgets.Layout(max_width="560px"))
        self.table = widgets.HTML()
        self.curves = widgets.Image(format="png", layout=widgets.Layout(max_width="760px"))
        self.log = widgets.Output()
        log_box = widgets.Accordion(children=[self.log], titles=("progress log",))
        for name, widget in (("method", self.method), ("eps", self.eps), ("k", self.k), ("run", self.run_button),
                             ("progress", self.progress), ("status", self.status), ("captions", self.captions),
                             ("images", self.images), ("table", self.table), ("curves", self.curves), ("log", self.log)):
            widget.add_class(CSS[name])
        self.widget = widgets.VBox([
            widgets.HBox([self.method, self.run_button]),
            widgets.HBox([self.eps, self.k]),
            widgets.HBox([self.progress, self.status]),
            self.captions,
            self.table,
            self.images,
            self.curves,
            log_box,
        ])
        self.widget.add_class(CSS["root"])
        self.run_button.on_click(lambda _button: self._on_run())
        for control in (self.method, self.eps, self.k):
            control.observe(lambda _change: self._on_change(), names="value")
        self._on_change()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- settings ------------------------------------------------------------------------------
    @property
    def key(self) -> tuple[str, int, int]:
        """The cache key of the current controls: (method, ε, k), with k = 0 for EM and UAP and MEM-0 read as EM."""
        method, eps, k = self.method.value, int(self.eps.value), int(self.k.value)
        if method != "MEM" or k == 0:
            return ("EM" if method == "MEM" else method, eps, 0)
        return (method, eps, k)

    def protector(self, key: tuple[str, int, int]) -> Protector:
        """The protector of a setting, with this explorer's budget for its method."""
        method, eps, k = key
        settings = self.settings[method] | {"eps": eps, "seed": self.seed, "device": self.device}
        if "step_size" not in settings:  # the few PGD steps of a round must be able to reach the ε on the slider
            settings["step_size"] = max(1, math.ceil(eps / settings.get("pgd_steps", ProtectConfig.pgd_steps)))
        if method == "MEM":
            return MEM(trigger_len=k, **settings)
        return PROTECTORS[method](**settings)

    @staticmethod
    def label(key: tuple[str, int, int]) -> str:
        method, eps, k = key
        return f"{method}-{k}, ε = {eps}/255" if method == "MEM" else f"{method}, ε = {eps}/255"

    def _on_change(self) -> None:
        """Disable k where it has no effect; show a cached result at once, else say that Run will compute it."""
        self.k.disabled = self.method.value != "MEM"
        key = self.key
        note = " (MEM with k = 0 has no trigger: that is EM)" if self.method.value == "MEM" and self.k.value == 0 else ""
        if key in self.cache:
            self.show(self.cache[key])
            self._set_status(f"{self.label(key)}{note}: from the cache")
        else:
            shown = f"; showing {self.shown.label}" if self.shown else ""
            self._set_status(f"{self.label(key)}{note}: not run yet, press Run{shown}")

    def _set_status(self, text: str) -> None:
        self.status.value = f"<span>{html.escape(text)}</span>"

    # -- work ----------------------------------------------------------------------------------
    def _on_run(self) -> None:
        """Button handler: errors are shown in the explorer (a callback's exception would otherwise vanish)."""
        try:
            self.run()
        except Exception as error:
            self._set_status(f"failed: {type(error).__name__}: {error} (details in the progress log)")
            self.log.append_stderr(traceback.format_exc())

    def run(self) -> ExplorerResult:
        """Protect, train the hacker and show the result for the current controls (from the cache when already run)."""
        key = self.key
        if key in self.cache:
            self.show(self.cache[key])
            self._set_status(f"{self.label(key)}: from the cache")
            return self.cache[key]
        started = time.perf_counter()
        epochs = self.hacker.epochs
        self.progress.value, self.progress.max = 0, 2 + epochs + (epochs if self.clean_history is None else 0)
        self.run_button.disabled = True
        self.log.outputs = ()
        try:
            with self._output_to_log():
                if self.clean_history is None:
                    self._set_status("training the reference hacker on clean data")
                    self.clean_history = self._train_hacker(self.train, "clean hacker")
                self._set_status(f"protecting with {self.label(key)}")
                protection = self.protector(key).fit(self.train, progress=self.progress_bars)
                self.progress.value += 1
                self._set_status(f"training a hacker on the data protected with {self.label(key)}")
                history = self._train_hacker(protection.apply(self.train), "hacker")
                self._set_status("drawing")
                result = self._result(key, protection, history, time.perf_counter() - started)
                self.progress.value += 1
        finally:
            self.run_button.disabled = False
        self.cache[key] = result
        self.show(result)
        self._set_status(f"{result.label}: done in {result.seconds:.0f} s")
        return result

    @contextmanager
    def _output_to_log(self) -> Iterator[None]:
        """Send prints and progress bars to the log widget; exceptions pass through (the Output context would swallow them in a kernel)."""
        self.log.__enter__()
        try:
            yield
        finally:
            self.log.__exit__(None, None, None)

    def _train_hacker(self, data: PairSource, description: str) -> History:
        model = create_model(self.hacker_model, device=self.device, seed=self.hacker.seed)

        def advance(_history: History) -> None:
            self.progress.value += 1

        return train_clip(model, data, self.test, self.hacker, progress=self.progress_bars, on_epoch=advance, description=description)

    def _result(self, key: tuple[str, int, int], protection: Protection, history: History, seconds: float) -> ExplorerResult:
        label = self.label(key)
        assert self.clean_history is not None
        title = f"Hacker {self.hacker_model}, {self.hacker.epochs} epochs; clean test set ({self.test.n_images} images)"
        markdown = results_table({"clean data": self.clean_history, label: history}, self.test, title)
        curves = plot_curves({"clean data": self.clean_history, label: history}, random=random_guess(self.test))
        return ExplorerResult(label, key[0], key[1], key[2], protection, history, captions_html(protection, self.train, self.example_rows),
                              markdown_table_html(markdown), markdown, figure_png(plot_protection(protection, self.train, self.example_rows)),
                              figure_png(curves), seconds)

    def show(self, result: ExplorerResult) -> None:
        """Put a result in the output widgets."""
        self.captions.value = result.captions_html
        self.images.value = result.images_png
        self.table.value = result.table_html
        self.curves.value = result.curves_png
        self.shown = result


def captions_html(protection: Protection, dataset: CaptionDataset, rows, tokenizer: CaptionTokenizer | None = None) -> str:
    """The published captions of some rows, every trigger token in its own `mem-trigger-token` span."""
    tokenizer = tokenizer or CaptionTokenizer()
    items = []
    for row in np.asarray(rows, dtype=np.int64):
        trigger = protection.triggers[protection.unit_of_row[row]] if protection.trigger_len else []
        words = "".join(f'<span class="mem-trigger-token" style="font-weight:bold;color:#b3261e">{html.escape(tokenizer.decode([t]))}</span> '
                        for t in trigger)
        items.append(f'<li><span class="mem-trigger">{words}</span>{html.escape(dataset.captions[row])}</li>')
    heading = ("Published captions: the trigger (bold red) goes before each caption" if protection.trigger_len
               else "Published captions: no trigger, the captions are unchanged")
    return f"<div><b>{heading}</b><ol>{''.join(items)}</ol></div>"


def markdown_table_html(markdown: str) -> str:
    """A markdown pipe table (as `experiment.results_table` writes it, optional bold title) as an HTML table."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip()]
    title = lines[0].strip("*") if lines and lines[0].startswith("**") else ""
    rows = [[html.escape(cell.strip()) for cell in line.strip("|").split("|")] for line in lines
            if line.startswith("|") and not set(line) <= set("|-: ")]
    if not rows:
        raise ValueError("no markdown table found")
    cell_style = 'style="padding:1px 8px;text-align:right;white-space:nowrap"'
    head = "".join(f"<th {cell_style}>{cell}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td {cell_style}>{cell}</td>" for cell in row) + "</tr>" for row in rows[1:])
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f'<table style="border-collapse:collapse;font-size:90%">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure at screen resolution, in the paper style."""
    buffer = io.BytesIO()
    with paper_style():
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
