"""The paper's figures as library calls: training curves, t-SNE of features, attention overlays, noise grids.

Every function builds a matplotlib `Figure` (object API, no pyplot state) in one consistent style
(`STYLE`), returns it, and with `save=path` also writes it (`.png` at 300 dpi, `.pdf` or `.svg`
with embedded TrueType text, so the figure stays editable vector art).
"""
from __future__ import annotations

import json
import os
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Protocol, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from scipy.signal import lfilter
from sklearn.manifold import TSNE

from .train import History

if TYPE_CHECKING:
    from .explain import Explanation
    from .models import ClipModel
    from .protect import Protection

COLUMN_WIDTH = 3.33  # inches: one column of a two-column paper (ACM, IEEE)
PAGE_WIDTH = 7.0  # inches: the full text width
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
    "lines.linewidth": 1.2, "figure.dpi": 100, "savefig.dpi": 300, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
}
SAVE_FORMATS = (".png", ".pdf", ".svg")
EXACT_TSNE_POINTS = 500
_DIRECTIONS = {"i2t": "image→text", "t2i": "text→image"}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "xgradcam": "XGrad-CAM",
                "layercam": "LayerCAM", "integrated_gradients": "Integrated Gradients"}


# -- style and saving ------------------------------------------------------------------------------
@contextmanager
def paper_style(**overrides) -> Iterator[None]:
    """The toolkit's figure style (`STYLE`, plus any rcParams given here) for the figures made inside."""
    with matplotlib.rc_context({**STYLE, **overrides}):
        yield


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG, PDF or SVG (by suffix), atomically, in the paper style."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: use one of {', '.join(SAVE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with paper_style():
        fig.savefig(tmp, format=path.suffix.lower()[1:])
    os.replace(tmp, path)
    return path


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        save_figure(fig, save)
    return fig


# -- tables as heat maps (transferability, robustness) ---------------------------------------------
def plot_heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], metric: str, random: float, xlabel: str,
                 save: str | os.PathLike | None = None) -> Figure:
    """One metric of a study's table as a heat map, every value written in its cell; the title gives random guessing."""
    with paper_style():
        fig = Figure(figsize=(max(COLUMN_WIDTH, 1.2 * len(columns) + 1.8), 0.45 * len(rows) + 1.1), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ink = "white" if value < values.mean() else "black"
            ax.text(j, i, f"{value:.0f}" if metric.endswith("MedR") else f"{value:.1f}", ha="center", va="center", color=ink)
        ax.set_xticks(range(len(columns)), list(columns), rotation=30 if len(columns) > 4 else 0, ha="right" if len(columns) > 4 else "center")
        ax.set_yticks(range(len(rows)), list(rows))
        ax.set_xlabel(xlabel)
        ax.grid(False)
        ax.set_title(f"{metric_label(metric)}; random guess {random:.1f}")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _finish(fig, save)


# -- training curves (paper Fig. 4) ---------------------------------------------------------------
def load_history(run: History | Mapping | str | os.PathLike) -> History:
    """A `History` from itself, its dict, a `history.json` path, or a run folder holding one."""
    if isinstance(run, History):
        return run
    if isinstance(run, Mapping):
        return History.from_dict(dict(run))
    path = Path(run)
    path = path / "history.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no training history at {path}")
    return History.from_dict(json.loads(path.read_text()))


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard): weight 0 leaves values as they are."""
    values = np.asarray(values, dtype=np.float64)
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    averaged = lfilter([1 - weight], [1, -weight], values)
    return averaged / (1 - weight ** np.arange(1, len(values) + 1))


def metric_label(key: str) -> str:
    """`t2i_R@10` -> `text→image R@10 (%)`, for axis labels."""
    direction, _, name = key.partition("_")
    if direction not in _DIRECTIONS:
        return key
    return f"{_DIRECTIONS[direction]} {name}" + (" (%)" if name.startswith("R@") else "")


def plot_curves(
    runs: Mapping[str, History | Mapping | str | os.PathLike],
    metrics: Sequence[str] = ("t2i_MedR", "i2t_R@10", "t2i_R@10"),
    loss: str | None = "step",
    smoothing: float = 0.9,
    random: Mapping[str, float] | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Training loss and clean-test retrieval per epoch of several runs, one colour per run.

    `runs`: name -> History, its dict, a history.json path or a run folder. `loss`: `"step"` (raw
    per-step loss, faint, and its `smoothing` average), `"epoch"` (mean per epoch) or None.
    `random`: random-guess metrics (`RetrievalReport.random`), drawn as dashed reference lines.
    """
    if loss not in ("step", "epoch", None):
        raise ValueError(f"loss must be 'step', 'epoch' or None, got {loss!r}")
    histories = {name: load_history(run) for name, run in runs.items()}
    problems = [f"run {name!r}: no epochs recorded" for name, h in histories.items() if not h.epochs]
    problems += [f"run {name!r} has no metric {key!r} (it has {sorted(h.epochs[0])})"
                 for name, h in histories.items() if h.epochs for key in metrics if key not in h.epochs[0]]
    if problems:
        raise ValueError("cannot plot curves:\n  " + "\n  ".join(problems))
    panels = (["loss"] if loss else []) + list(metrics)
    with paper_style():
        fig = Figure(figsize=(min(PAGE_WIDTH, 2.3 * len(panels)), 2.0), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        colours = _colours(len(histories))
        for colour, (name, history) in zip(colours, histories.items()):
            epochs = [entry["epoch"] for entry in history.epochs]
            for ax, key in zip(axes, panels):
                if key != "loss":
                    ax.plot(epochs, history.metric(key), color=colour, marker="o", markersize=2.5, label=name)
                elif loss == "epoch":
                    ax.plot(epochs, history.metric("loss"), color=colour, marker="o", markersize=2.5, label=name)
                else:
                    steps = np.arange(1, len(history.step_loss) + 1) * len(history.epochs) / max(1, len(history.step_loss))
                    ax.plot(steps, history.step_loss, color=colour, alpha=0.25, linewidth=0.6)
                    ax.plot(steps, smooth(history.step_loss, smoothing), color=colour, label=name)
        for ax, key in zip(axes, panels):
            ax.set_xlabel("epoch")
            ax.set_ylabel("training loss" if key == "loss" else metric_label(key))
            if random is not None and key in random:
                ax.axhline(random[key], color="0.4", linestyle="--", linewidth=0.8, label="random guess")
        legend = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 5))
    return _finish(fig, save)


# -- t-SNE of image and text features (paper Fig. 6) ----------------------------------------------
class PairRows(Protocol):
    """What t-SNE needs of a dataset, or of a protected view of one."""

    group_ids: np.ndarray

    def image_batch(self, rows: np.ndarray) -> torch.Tensor: ...

    def token_batch(self, rows: np.ndarray, tokenizer, context_length: int) -> torch.Tensor: ...


@dataclass
class TsneEmbedding:
    """2-D t-SNE points of image and text features: one image point per distinct image, one text point per row."""

    points: np.ndarray  # (N, 2)
    modality: np.ndarray  # (N,) "image" or "text"
    group: np.ndarray  # (N,) image group id of each point
    row: np.ndarray  # (N,) dataset row each point was computed from


@torch.no_grad()
def tsne_features(model: ClipModel, dataset: PairRows, groups: Sequence[int], seed: int = 0,
                  perplexity: float = 30.0, batch_size: int = 256) -> TsneEmbedding:
    """Encode the images and captions of the given image groups and embed all features jointly in 2-D.

    Works on any dataset-like object with `group_ids`, `image_batch` and `token_batch` (a clean
    dataset or a protected view): an image is encoded from every row that shows it, and rows of a
    group with identical pixels count once. Perplexity is capped for small sets; `seed` fixes the result.
    """
    groups = np.asarray(groups, dtype=np.int64)
    missing = np.setdiff1d(groups, dataset.group_ids)
    if len(missing):
        raise ValueError(f"groups {missing.tolist()} have no rows in this dataset")
    rows = np.flatnonzero(np.isin(dataset.group_ids, groups))
    was_training = model.training
    model.eval()
    try:
        pixels, text = [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            pixels.append(dataset.image_batch(chunk))
            text.append(model.encode_text(dataset.token_batch(chunk, model.tokenizer, model.context_length)).float().cpu())
        pixels = torch.cat(pixels)
        distinct = _distinct_images(pixels, dataset.group_ids[rows])
        image = torch.cat([model.encode_image(pixels[distinct[s:s + batch_size]].to(model.device)).float().cpu()
                           for s in range(0, len(distinct), batch_size)])
    finally:
        model.train(was_training)
    features = torch.cat([image, torch.cat(text)]).numpy()
    point_rows = np.concatenate([rows[distinct], rows])
    # Exact gradients for the few hundred points of a figure: faster there than Barnes-Hut, whose
    # threaded approximation pays off only on thousands of points.
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(features) - 1) / 3), init="pca", learning_rate="auto",
                method="exact" if len(features) <= EXACT_TSNE_POINTS else "barnes_hut", random_state=seed)
    return TsneEmbedding(
        points=tsne.fit_transform(features),
        modality=np.array(["image"] * len(distinct) + ["text"] * len(rows)),
        group=dataset.group_ids[point_rows],
        row=point_rows,
    )


def _distinct_images(pixels: torch.Tensor, groups: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of every distinct (group, pixels) pair."""
    seen: dict[tuple[int, bytes], int] = {}
    for index, (group, image) in enumerate(zip(groups, pixels)):
        seen.setdefault((int(group), image.numpy().tobytes()), index)
    return np.array(sorted(seen.values()), dtype=np.int64)


def plot_tsne(embedding: TsneEmbedding, title: str | None = None, ax=None, save: str | os.PathLike | None = None) -> Figure:
    """Images as filled circles, captions as hollow triangles, one colour per image group."""
    with paper_style():
        if ax is None:
            fig = Figure(figsize=(COLUMN_WIDTH, COLUMN_WIDTH), layout="constrained")
            ax = fig.subplots()
        fig = ax.figure
        groups = np.unique(embedding.group)
        for colour, group in zip(_colours(len(groups)), groups):
            text = (embedding.group == group) & (embedding.modality == "text")
            image = (embedding.group == group) & (embedding.modality == "image")
            ax.scatter(*embedding.points[text].T, s=18, marker="^", facecolors="none", edgecolors=[colour], linewidths=0.8)
            ax.scatter(*embedding.points[image].T, s=45, marker="o", color=colour, edgecolors="black", linewidths=0.6, zorder=3)
        _bare(ax)
        ax.set_title(title or "")
        ax.legend(handles=[Line2D([], [], marker="o", color="0.4", markeredgecolor="black", linestyle="", label="image"),
                           Line2D([], [], marker="^", color="0.4", markerfacecolor="none", linestyle="", label="text")],
                  loc="best")
    return _finish(fig, save)


def plot_tsne_comparison(
    panels: Mapping[str, TsneEmbedding | tuple[ClipModel, PairRows]],
    groups: Sequence[int] | None = None,
    seed: int = 0,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Side-by-side t-SNE panels, e.g. {"clean model, clean data": (clean, test), "poisoned model, protected data": (hacker, view)}.

    A panel is a `TsneEmbedding` or a (model, dataset-like) pair, embedded here for `groups` with `seed`.
    """
    embeddings = {}
    for title, panel in panels.items():
        if isinstance(panel, TsneEmbedding):
            embeddings[title] = panel
        elif groups is None:
            raise ValueError(f"panel {title!r} is a (model, dataset) pair: give the image groups to embed")
        else:
            embeddings[title] = tsne_features(*panel, groups=groups, seed=seed)
    with paper_style():
        fig = Figure(figsize=(min(PAGE_WIDTH, COLUMN_WIDTH * len(embeddings)), COLUMN_WIDTH), layout="constrained")
        for ax, (title, embedding) in zip(fig.subplots(1, len(embeddings), squeeze=False)[0], embeddings.items()):
            plot_tsne(embedding, title=title, ax=ax)
    return _finish(fig, save)


# -- attention overlays ----------------------------------------------------------------------------
def heat_overlay(image: np.ndarray, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3) image with a [0, 1] heat map blended over it in a colormap."""
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match image {image.shape[:2]}")
    colour = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    return np.clip(np.rint((1 - alpha) * image + alpha * 255 * colour), 0, 255).astype(np.uint8)


def plot_image_attention(explanations: Sequence[Explanation], show_image: bool = True, cmap: str = "jet",
                         alpha: float = 0.5, save: str | os.PathLike | None = None) -> Figure:
    """Grad-CAM maps over their images, one panel per explanation titled by its caption and similarity."""
    explanations = _of_modality(explanations, "image")
    first = [("image", explanations[0].image)] if show_image else []
    panels = first + [(f"{_wrap(e.caption, 24)}\ncos = {e.score:.2f}", heat_overlay(e.image, e.attribution, cmap, alpha))
                      for e in explanations]
    with paper_style():
        fig = Figure(figsize=(min(PAGE_WIDTH, 1.45 * len(panels) + 0.4), 1.95), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, picture) in zip(axes, panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=6.5)
            ax.set_axis_off()
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=list(axes), shrink=0.7, aspect=15)
        bar.set_label(f"{METHOD_NAMES.get(explanations[0].method, explanations[0].method)} (normalised)")
    return _finish(fig, save)


def plot_token_attention(explanations: Sequence[Explanation], cmap: str = "RdBu_r", width: float = PAGE_WIDTH,
                         labels: Sequence[str] | None = None, save: str | os.PathLike | None = None) -> Figure:
    """Captions as rows of tokens coloured by attribution on one symmetric scale; trigger tokens boxed and labelled."""
    explanations = _of_modality(explanations, "text")
    labels = list(labels) if labels is not None else [f"cos = {e.score:.2f}" for e in explanations]
    limit = max(float(np.abs(e.attribution).max()) for e in explanations) or 1.0
    norm, colours = Normalize(-limit, limit), matplotlib.colormaps[cmap]
    with paper_style():
        size = STYLE["font.size"]
        font = FontProperties(size=size)
        measure = RendererAgg(10, 10, 72)  # at 72 dpi one pixel is one point
        pad, gap, line = 0.3 * size, 0.35 * size, 2.3 * size
        usable = width * 72 - 2 * pad
        placed, y = [], 0.0
        for label, e in zip(labels, explanations):
            y += size
            placed.append(("label", label, 0.0, y, None))
            y += line if e.trigger.any() else 0.7 * line
            x = 0.0
            for token, value, is_trigger in zip(e.tokens, e.attribution, e.trigger):
                token = token.replace("$", r"\$")
                advance = measure.get_text_width_height_descent(token, font, ismath=False)[0] + 2 * pad + gap
                if x and x + advance > usable:
                    x, y = 0.0, y + line
                placed.append(("token", token, x + pad, y, (value, is_trigger)))
                x += advance
            y += 0.5 * line
        height = y + 1.8 * line  # room for the colour bar
        fig = Figure(figsize=(width, height / 72))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(-pad, width * 72 - pad)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        for kind, text, x, y, detail in placed:
            if kind == "label":
                ax.text(x, y, text, va="center", ha="left", fontsize=size, fontweight="bold")
                continue
            value, is_trigger = detail
            face = colours(norm(value))
            ink = "white" if 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5 else "black"
            ax.text(x, y, text, va="center", ha="left", fontsize=size, color=ink,
                    bbox={"boxstyle": f"square,pad={pad / size}", "facecolor": face,
                          "edgecolor": "black" if is_trigger else "none", "linewidth": 1.4 if is_trigger else 0})
            if is_trigger:
                ax.text(x - pad, y - 0.95 * size, "trigger", va="bottom", ha="left", fontsize=0.7 * size, style="italic")
        cax = fig.add_axes((0.3, 0.9 * line / height, 0.4, 0.25 * line / height))
        bar = fig.colorbar(ScalarMappable(norm, colours), cax=cax, orientation="horizontal")
        bar.set_label(f"{METHOD_NAMES.get(explanations[0].method, explanations[0].method)} attribution to the image-caption similarity",
                      fontsize=0.85 * size)
        bar.ax.tick_params(labelsize=0.8 * size)
    return _finish(fig, save)


def plot_explanation(explanation: Explanation, save: str | os.PathLike | None = None, **options) -> Figure:
    """The figure that fits an explanation: heat map over the image, or coloured caption tokens."""
    draw = plot_image_attention if explanation.modality == "image" else plot_token_attention
    return draw([explanation], save=save, **options)


def _of_modality(explanations, modality: str) -> list:
    explanations = [explanations] if hasattr(explanations, "attribution") else list(explanations)
    if not explanations:
        raise ValueError("nothing to plot: no explanations given")
    wrong = [i for i, e in enumerate(explanations) if e.modality != modality]
    if wrong:
        raise ValueError(f"explanations {wrong} are not {modality} explanations")
    return explanations


# -- protected examples ----------------------------------------------------------------------------
def amplify_noise(noise: np.ndarray, eps: float) -> np.ndarray:
    """Visible uint8 picture of int8 noise in [-eps, eps] (pixel units): -eps -> 1, 0 -> 128, +eps -> 255 (all 128 for eps 0)."""
    gain = 127 / eps if eps else 0.0
    return np.clip(np.rint(noise.astype(np.float64) * gain + 128), 0, 255).astype(np.uint8)


def plot_noise_grid(clean: Sequence[np.ndarray], noise: Sequence[np.ndarray], captions: Sequence[str], eps: float = 8,
                    save: str | os.PathLike | None = None) -> Figure:
    """One column per example: clean image, protected image (clean + noise), noise amplified to full range.

    `clean`: uint8 (H, W, 3) images; `noise`: int8 (H, W, 3) in [-eps, eps] pixel units (eps in
    1/255 units, as everywhere in the toolkit); `captions`: the protected captions (trigger first), as titles.
    """
    problems = []
    if not len(clean) == len(noise) == len(captions) > 0:
        problems.append(f"give as many clean images, noises and captions (got {len(clean)}, {len(noise)}, {len(captions)})")
    for i, (image, delta) in enumerate(zip(clean, noise)):
        image, delta = np.asarray(image), np.asarray(delta)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            problems.append(f"example {i}: clean image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if delta.shape != image.shape or not np.issubdtype(delta.dtype, np.integer):
            problems.append(f"example {i}: noise must be integer with the image's shape {image.shape}, got {delta.dtype} {delta.shape}")
        elif np.abs(delta.astype(np.int64)).max(initial=0) > eps:
            problems.append(f"example {i}: noise reaches {np.abs(delta.astype(np.int64)).max()} > eps {eps}")
    if problems:
        raise ValueError("cannot draw the noise grid:\n  " + "\n  ".join(problems))
    rows = ("clean", "protected", f"noise ±{eps:g}/255\n(×{127 / eps:.3g})" if eps else "noise (none: ε = 0)")
    with paper_style():
        fig = Figure(figsize=(min(PAGE_WIDTH, 1.25 * len(clean) + 0.3), 4.1), layout="constrained")
        axes = fig.subplots(3, len(clean), squeeze=False)
        for column, (image, delta, caption) in enumerate(zip(clean, noise, captions)):
            protected = np.clip(image.astype(np.int16) + delta, 0, 255).astype(np.uint8)
            for row, picture in enumerate((image, protected, amplify_noise(np.asarray(delta), eps))):
                ax = axes[row, column]
                ax.imshow(picture, interpolation="nearest")
                _bare(ax)
                if column == 0:
                    ax.set_ylabel(rows[row])
            axes[0, column].set_title(_wrap(caption, 22), fontsize=6.5)
    return _finish(fig, save)



def plot_protection(protection: Protection, dataset, rows: Sequence[int] | int = 4, save: str | os.PathLike | None = None) -> Figure:
    """`plot_noise_grid` of some rows of a protected dataset: clean image, protected image, amplified noise, published caption.

    `rows`: dataset rows, or a number n for the first caption of each of the first n images.
    """
    protection.check_fits(dataset)
    if isinstance(rows, int):
        rows = dataset.first_rows()[:rows]
    rows = np.asarray(rows, dtype=np.int64)
    clean = dataset.images(dataset.group_ids[rows])
    noise = np.asarray(protection.noise[protection.unit_of_row[rows]])
    captions = [protection.published_caption(dataset, int(row)) for row in rows]
    return plot_noise_grid(list(clean), list(noise), captions, eps=protection.eps, save=save)

# -- helpers ---------------------------------------------------------------------------------------
def _colours(n: int) -> list:
    """n distinct colours: tab10, then tab20, then an even sweep of a cyclic map."""
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def _bare(ax) -> None:
    """No ticks, grid or frame: for pictures and t-SNE maps, whose axes carry no units."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or " "
