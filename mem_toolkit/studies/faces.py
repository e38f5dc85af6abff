"""The face case study (the paper's Table 3): protect named face photos with MEM-3 and MEM-5, then hack them.

A hacker fine-tunes (or trains) a CLIP on (face photo, caption naming the person) pairs. Each
hacker architecture is trained with one budget on the clean training photos, on the MEM-3 and
MEM-5 protected ones, and on MEM-3's controls (its trigger without its noise, its noise without
its trigger); every hacker is then asked, on the clean test photos, to name each face among all
people (top-1 / top-5 beside chance) and to retrieve photos and captions (N x N, both directions).
Protections, hackers and evaluations are cached in the output folder, so an interrupted study
resumes and a finished one is reread, not recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .. import distributed
from ..atomic import write_json
from ..data.identity import FaceData
from ..experiment import protect_cached
from ..intervals import Interval, bootstrap_interval
from ..models import ClipModel, create_model, load_model, resolve_device
from ..pretrain import pretrain_clip
from ..protect import MEM, Protection
from ..train import History, TrainConfig
from .face_metrics import evaluate_faces
from .face_sources import REST, SYNTHETIC, pretraining_faces, read_study_photos
from .grid import Hacker, resolve_preset, run_grid

# Tuned on the synthetic faces (README, "Face case study"): a 16-word trigger vocabulary, a short-lived surrogate
# restarted every round at a higher learning rate, and noise that starts as a code of the trigger.
FACE_MEM_SETTINGS = dict(trigger_vocab_size=16, surrogate_reset=1, surrogate_lr=5e-4, surrogate_steps=20, noise_init="trigger-code",
                         pgd_steps=8, candidates=8)


@dataclass(frozen=True)
class FacesPreset:
    """Data size (synthetic faces), hacker budget and MEM settings of one case-study setting."""

    n_people: int = 50
    photos_per_person: int = 10
    image_size: int = 64
    hacker_epochs: int = 30
    hacker_batch_size: int = 64
    hacker_lr: float = 5e-4
    mem: dict = field(default_factory=dict)  # ProtectConfig settings shared by MEM-3 and MEM-5
    controls: tuple[str, ...] = ("trigger-only", "noise-only")  # of MEM-3, per hacker
    seeds: tuple[int, ...] = (0,)  # each hacker is trained once per seed; tables give the mean and a 95 % bootstrap interval
    seed: int = 0
    pretrain_epochs: int = 30  # --pretrain-on: the pretrained hackers' training on other people
    pretrain_people: int = 100  # --pretrain-on synthetic: invented people to pretrain on

    def hacker_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.hacker_epochs, batch_size=self.hacker_batch_size, lr=self.hacker_lr, seed=self.seed + 1)

    def pretrain_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.pretrain_epochs, batch_size=self.hacker_batch_size, lr=self.hacker_lr, seed=self.seed + 7)


PRESETS: dict[str, FacesPreset] = {
    # seconds: checks that data, protection, hackers and figures run; its figures mean nothing
    "smoke": FacesPreset(n_people=6, photos_per_person=3, hacker_epochs=1, hacker_batch_size=8, pretrain_epochs=1, pretrain_people=6,
                         mem=dict(FACE_MEM_SETTINGS, rounds=1, surrogate_steps=1, pgd_steps=1, trigger_rounds=1, candidates=2, batch_size=8)),
    "quick": FacesPreset(hacker_epochs=20, mem=dict(FACE_MEM_SETTINGS, rounds=12, trigger_rounds=4)),
    "full": FacesPreset(hacker_epochs=30, mem=dict(FACE_MEM_SETTINGS, rounds=20, trigger_rounds=4), seeds=(0, 1, 2)),
}
DEFAULT_HACKERS = ("mem-tiny-rn", "mem-tiny-vit")
PROTECTIONS = ("mem-3", "mem-5")
PRETRAINED_SURROGATE = "pretrained"  # surrogate_pretrained: start the surrogate from the weights pretrained on other people
CONTROLS = {"trigger-only": dict(noise=False), "noise-only": dict(trigger=False)}
TABLE_ROWS = {"clean": "Clean", "mem-3": "MEM-3", "mem-5": "MEM-5"}
IDENTIFICATION_COLUMNS = (("identification", "top1", "top-1"), ("identification", "top5", "top-5"))
RETRIEVAL_COLUMNS = (("retrieval", "i2t_R@1", "i2t R@1"), ("retrieval", "i2t_R@5", "i2t R@5"),
                     ("retrieval", "t2i_R@1", "t2i R@1"), ("retrieval", "t2i_R@5", "t2i R@5"))


def load_face_data(data: str | os.PathLike = "synthetic", preset: FacesPreset | None = None, progress: bool = True,
                   people: int | None = None) -> FaceData:
    """The case study's faces: `"synthetic"` (embedded), an identity folder `root/<person>/<photo>`, or a CSV `image,identity`;
    `people` of them (chosen from the seed; default all, or the preset's number of invented people)."""
    preset = preset or PRESETS["quick"]
    return _study_photos(data, preset, people, None, progress).split(preset.seed)


def _study_photos(data, preset: FacesPreset, people: int | None, pretrain_on, progress: bool):
    extra = preset.pretrain_people if str(data) == SYNTHETIC and str(pretrain_on) in (REST, SYNTHETIC) else 0
    return read_study_photos(data, preset.image_size, people=people, synthetic_people=preset.n_people, extra_synthetic=extra,
                             photos_per_person=preset.photos_per_person, seed=preset.seed, progress=progress)


def face_protectors(preset: FacesPreset, device: str | torch.device = "auto", surrogate_model: str = "mem-tiny-rn") -> dict[str, MEM]:
    """MEM-3 and MEM-5 with the preset's settings and the given surrogate architecture."""
    settings = {"seed": preset.seed, "surrogate_model": surrogate_model} | preset.mem
    return {name: MEM(int(name.split("-")[1]), device=device, **settings) for name in PROTECTIONS}


def protect_faces(face_data: FaceData, preset: FacesPreset, out_dir: str | os.PathLike, surrogate_model: str = "mem-tiny-rn",
                  surrogate_pretrained: str | os.PathLike | None = None, progress: bool = True,
                  device: str | torch.device = "auto") -> tuple[dict[str, Protection], dict[str, float]]:
    """MEM-3 and MEM-5 protections of the training faces (from `out_dir/protections` when made before), with seconds spent."""
    protections, seconds = {}, {}
    for name, protector in face_protectors(preset, device, surrogate_model).items():
        started = time.perf_counter()
        surrogate = None if surrogate_pretrained is None else create_model(surrogate_model, surrogate_pretrained, protector.device)
        protections[name] = protect_cached(protector, face_data.train, Path(out_dir) / "protections" / name, progress, surrogate)
        seconds[name] = time.perf_counter() - started
    return protections, seconds


@dataclass
class HackerResult:
    """One hacker (architecture x training data): its clean-test face metrics, training history, wall time and run folder
    for the first seed (the model the figures show), and the metrics of every seed."""

    architecture: str
    arm: str
    metrics: dict
    history: History
    seconds: float
    folder: Path
    seed_metrics: list[dict] = field(default_factory=list)

    def interval(self, key: str) -> Interval:
        """Mean and 95 % bootstrap interval of one table metric (`top1`, `i2t_R@5`, ...), resampling seeds and test faces."""
        return bootstrap_interval([metrics["per_face"][key] for metrics in self.seed_metrics or [self.metrics]])

    def model(self, device: str | torch.device = "cpu") -> ClipModel:
        """The trained hacker, reloaded from its run folder."""
        return load_model(self.folder / "model.safetensors", device)


def hacker_arms(face_data: FaceData, protections: Mapping[str, Protection], controls: Sequence[str]) -> dict:
    """Training data of every hacker: clean, each protection, and MEM-3's controls."""
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}; choose from {sorted(CONTROLS)}")
    arms = {"clean": face_data.train} | {name: p.apply(face_data.train) for name, p in protections.items()}
    return arms | {f"mem-3 {c}": protections["mem-3"].apply(face_data.train, **CONTROLS[c]) for c in controls}


def study_hackers(preset: FacesPreset, architectures: Sequence[str], hacker_weights: Mapping[str, str | os.PathLike] | None = None,
                  pretrained: Mapping[str, str | os.PathLike] | None = None) -> list[Hacker]:
    """The study's hackers: each architecture from scratch, or fine-tuned from `hacker_weights[architecture]` (given weights);
    with `pretrained` (weights this study pretrained on other people), both from scratch and fine-tuned, side by side."""
    hacker_weights, pretrained = dict(hacker_weights or {}), dict(pretrained or {})
    stray = sorted((set(hacker_weights) | set(pretrained)) - set(architectures))
    if stray:
        raise ValueError(f"weights given for {stray}, which are not among the hackers {list(architectures)}")
    config = preset.hacker_config()
    hackers = []
    for architecture in architectures:
        if architecture in hacker_weights:
            hackers.append(Hacker(architecture, config, str(hacker_weights[architecture])))
            continue
        hackers.append(Hacker(architecture, config))
        if architecture in pretrained:
            hackers.append(Hacker(architecture, config, str(pretrained[architecture])))
    return hackers


def train_hackers(face_data: FaceData, arms: Mapping, preset: FacesPreset, out_dir: str | os.PathLike, hackers: Sequence[Hacker],
                  progress: bool = True, device: str | torch.device = "auto") -> dict[str, dict[str, HackerResult]]:
    """Train every hacker on every arm once per seed with the same budget, and evaluate it on the clean test faces.

    Results are keyed by hacker label (`mem-tiny-rn`, `mem-tiny-rn (fine-tuned)`). Finished hackers are
    reread from `out_dir/hackers` (the study grid, `mem_toolkit.studies`); rank 0 evaluates under torchrun.
    """
    device = resolve_device(device)
    grid = run_grid(arms, face_data.test, hackers, out_dir, preset.seeds, device, progress)
    results: dict[str, dict[str, HackerResult]] = {}
    for hacker in hackers:
        for arm, runs in grid.runs[hacker.label].items():
            seed_metrics = [distributed.main_only(lambda: _evaluation(run.folder, len(run.history.epochs), face_data, device)) for run in runs]
            first = runs[0]
            results.setdefault(hacker.label, {})[arm] = HackerResult(hacker.architecture, arm, seed_metrics[0], first.history,
                                                                     first.seconds, first.folder, seed_metrics)
    return results


def pretrain_hackers(pretraining: FaceData, architectures: Sequence[str], preset: FacesPreset, out_dir: str | os.PathLike,
                     progress: bool = True, device: str | torch.device = "auto") -> dict[str, Path]:
    """Pretrain each architecture from scratch on the other people's faces (`out_dir/pretraining`, cached): architecture -> weights.

    The folder is named after the pretraining data and budget, so other pretraining gets other weights
    and other fine-tuned hacker runs, never stale ones.
    """
    folder = Path(out_dir) / "pretraining"
    config = preset.pretrain_config()
    tag = hashlib.sha1(json.dumps([pretraining.train.fingerprint(), config.record()]).encode()).hexdigest()[:8]
    return {architecture: pretrain_clip(architecture, pretraining.train, pretraining.test, config, folder / f"{architecture}-{tag}", device,
                                        progress)
            for architecture in architectures}


def _evaluation(run_folder: Path, epochs: int, face_data: FaceData, device) -> dict:
    """Clean-test identification and retrieval of the hacker trained in `run_folder` (cached beside its weights)."""
    cache = run_folder / "faces_eval.json"
    stamp = {"test": face_data.test.fingerprint(), "epochs": epochs, "names": face_data.names, "per_face": True}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("stamp") == stamp:
            return saved["metrics"]
    metrics = evaluate_faces(load_model(run_folder / "model.safetensors", device), face_data)
    write_json(cache, {"stamp": stamp, "metrics": metrics})
    return metrics


def faces_table(results: Mapping[str, Mapping[str, HackerResult]], rows: Mapping[str, str] = TABLE_ROWS, title: str = "") -> str:
    """Markdown table in the paper's Table 3 layout: one row per training data, a column group per hacker (from scratch, fine-tuned)."""
    architectures = list(results)
    columns = IDENTIFICATION_COLUMNS + RETRIEVAL_COLUMNS
    head = "| hacker trained on | " + " | ".join(f"{a} {label}" for a in architectures for _, _, label in columns) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---|" + "---:|" * (len(columns) * len(architectures))]
    for arm, label in rows.items():
        if all(arm in results[a] for a in architectures):
            lines.append(f"| {label} | " + " | ".join(results[a][arm].interval(key).format() for a in architectures
                                                      for group, key, _ in columns) + " |")
    first = results[architectures[0]]["clean"].metrics
    chance = [first["identification"]["chance_top1"], first["identification"]["chance_top5"],
              first["retrieval_random"]["i2t_R@1"], first["retrieval_random"]["i2t_R@5"],
              first["retrieval_random"]["t2i_R@1"], first["retrieval_random"]["t2i_R@5"]]
    lines.append("| chance | " + " | ".join(f"{value:.1f}" for _ in architectures for value in chance) + " |")
    return "\n".join(lines)


def efficacy_checks(results: Mapping[str, Mapping[str, HackerResult]]) -> dict[str, bool]:
    """The case study's claims per hacker: the clean hacker names people far above chance, MEM-3's near chance."""
    checks = {}
    for hacker, arms in results.items():
        chance = arms["clean"].metrics["identification"]["chance_top1"]
        checks[f"{hacker}: clean top-1 >= 5x chance (lower bound)"] = arms["clean"].interval("top1").low >= 5 * chance
        if "mem-3" in arms:
            checks[f"{hacker}: MEM-3 top-1 <= 2x chance (upper bound)"] = arms["mem-3"].interval("top1").high <= 2 * chance
    return checks


def run_faces_study(
    out_dir: str | os.PathLike,
    data: str | os.PathLike | FaceData = "synthetic",
    preset: str | FacesPreset = "quick",
    hackers: Sequence[str] = DEFAULT_HACKERS,
    hacker_weights: Mapping[str, str | os.PathLike] | None = None,
    surrogate_model: str = "mem-tiny-rn",
    surrogate_pretrained: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "auto",
    seeds: Sequence[int] | None = None,
    people: int | None = None,
    pretrain_on: str | os.PathLike | None = None,
    mem_settings: Mapping[str, object] | None = None,
) -> dict:
    """Run the whole case study into `out_dir` (results.json, results.md, figures/); returns the results dict.

    `data`: `"synthetic"`, an identity folder, a labels CSV, or a `FaceData`; `people`: study only that many
    of its people (chosen from the seed). `hacker_weights`: architecture -> starting weights (open_clip tag
    or checkpoint) for fine-tuning hackers. `pretrain_on`: pretrain every hacker architecture here on other
    people (`"rest"` of `data`, `"synthetic"`, or an identity folder / CSV; checked disjoint from the study)
    and report it fine-tuned beside from scratch. `surrogate_pretrained`: starting weights of the protection's
    surrogate (default: from scratch; `"pretrained"`: the weights pretrained on the other people).
    `mem_settings`: MEM settings over the preset's (`ProtectConfig` names), e.g. per-person noise or a larger ε.
    `seeds`: train every hacker once per seed (default: the preset's); tables give the mean and a 95 %
    interval over seeds and test faces. Under torchrun every process runs it: protections and hackers are
    distributed, rank 0 evaluates and writes.
    """
    preset = resolve_preset(preset, PRESETS, "face study")
    if seeds is not None:
        preset = replace(preset, seeds=tuple(seeds))
    if mem_settings:
        preset = replace(preset, mem=preset.mem | dict(mem_settings))
        face_protectors(preset, "cpu", surrogate_model)  # a setting out of range is refused before any work
    if pretrain_on is not None and hacker_weights:
        raise ValueError("give hackers either their weights (--pretrained) or data to pretrain on (--pretrain-on), not both")
    if str(surrogate_pretrained) == PRETRAINED_SURROGATE and pretrain_on is None:
        raise ValueError(f"surrogate_pretrained={PRETRAINED_SURROGATE!r} needs pretrain_on (the people to pretrain on)")
    if isinstance(data, FaceData) and (people is not None or pretrain_on is not None):
        raise ValueError("people and pretrain_on need the data as a source (synthetic, a folder or a CSV), not a FaceData")
    progress = progress and distributed.is_main()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    if isinstance(data, FaceData):
        face_data, pretraining = data, None
    else:
        photos = _study_photos(data, preset, people, pretrain_on, progress)
        face_data = photos.split(preset.seed)
        pretraining = None if pretrain_on is None else pretraining_faces(
            pretrain_on, photos, face_data, preset.image_size, synthetic_people=preset.pretrain_people,
            photos_per_person=preset.photos_per_person, seed=preset.seed, progress=progress)
    stages["data"] = time.perf_counter() - clock
    source = "synthetic" if str(data) == "synthetic" else ("FaceData" if isinstance(data, FaceData) else str(Path(data).resolve()))
    manifest = {"data": source, "train": face_data.train.fingerprint(), "test": face_data.test.fingerprint(),
                "preset": _study_settings(preset)}
    problem = distributed.main_only(lambda: _claim_folder(out, manifest, face_data))
    if problem:
        raise ValueError(problem)
    pretrained: dict[str, Path] = {}
    if pretraining is not None:
        clock = time.perf_counter()
        architectures = list(dict.fromkeys([*hackers, surrogate_model] if str(surrogate_pretrained) == PRETRAINED_SURROGATE else hackers))
        pretrained = pretrain_hackers(pretraining, architectures, preset, out, progress, device)
        stages["pretraining"] = time.perf_counter() - clock
        if str(surrogate_pretrained) == PRETRAINED_SURROGATE:
            surrogate_pretrained = pretrained[surrogate_model]
    protections, seconds = protect_faces(face_data, preset, out, surrogate_model, surrogate_pretrained, progress, device)
    stages |= {f"protect {name}": s for name, s in seconds.items()}
    arms = hacker_arms(face_data, protections, preset.controls)
    hacker_list = study_hackers(preset, hackers, hacker_weights, {a: w for a, w in pretrained.items() if a in hackers})
    results = train_hackers(face_data, arms, preset, out, hacker_list, progress, device)
    stages |= {f"hacker {a} {arm}": r.seconds for a, arms_ in results.items() for arm, r in arms_.items()}
    clock = time.perf_counter()
    figures = distributed.main_only(lambda: write_figures(out / "figures", face_data, protections, results))
    stages["figures"] = time.perf_counter() - clock
    return distributed.main_only(lambda: _write_results(out, preset, face_data, source, protections, results, stages, figures,
                                                        hacker_list, surrogate_pretrained, pretraining, pretrain_on))


def _study_settings(preset: FacesPreset) -> dict:
    """The preset's settings that make a study what it is: not its seeds (more seeds add runs) nor its pretraining
    (pretrained weights and the hackers fine-tuned from them live in folders named after it)."""
    ignored = {"seeds", "pretrain_epochs", "pretrain_people"}
    return json.loads(json.dumps({k: v for k, v in asdict(preset).items() if k not in ignored}))


def _claim_folder(out: Path, manifest: dict, face_data: FaceData) -> str | None:
    """Why this study cannot use `out` (it holds a study with other data or settings), or None after recording the
    manifest and the pseudonyms there."""
    path = out / "study.json"
    if path.exists():
        saved = json.loads(path.read_text())
        differing = sorted(k for k in manifest if saved.get(k) != manifest[k])
        if differing:
            return f"{out} holds a face study with other {', '.join(differing)}; use another output folder or remove that one"
    else:
        write_json(path, manifest)
    face_data.save_names(out / "names.json")
    return None


def write_figures(folder: str | os.PathLike, face_data: FaceData, protections: Mapping[str, Protection],
                  results: Mapping[str, Mapping[str, HackerResult]], n_examples: int = 4) -> list[str]:
    """Protected faces with their trigger captions, hacker curves, and attention maps before and after protection."""
    from matplotlib import pyplot as plt

    from ..plots import plot_curves, plot_noise_grid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    train = face_data.train
    people = np.unique(face_data.train_identity, return_index=True)[1][:n_examples]  # one photo of each of the first people
    rows = train.first_rows()[people].tolist()
    for name, protection in protections.items():
        noise = [np.asarray(protection.noise[protection.unit_of_row[r]]) for r in rows]
        captions = [protection.published_caption(train, r) for r in rows]
        path = folder / f"examples_{name}.png"
        plt.close(plot_noise_grid(train.images(train.group_ids[rows]), noise, captions, eps=protection.eps, save=path))
        written.append(path)
    random = next(iter(results.values()))["clean"].metrics["retrieval_random"]
    for hacker, arms in results.items():
        file_stem = re.sub(r"[^\w.-]+", "-", hacker).strip("-")  # `mem-tiny-rn (fine-tuned)` -> mem-tiny-rn-fine-tuned
        path = folder / f"curves_{file_stem}.png"
        plt.close(plot_curves({arm: r.history for arm, r in arms.items()}, metrics=("i2t_R@5", "t2i_R@5"), loss="epoch", random=random,
                              save=path))
        written.append(path)
    first = next(iter(results.values()))
    if "mem-3" in first:
        written += attention_figures(folder, face_data, protections["mem-3"], first["clean"].model(), first["mem-3"].model())
    return [str(p) for p in written]


def attention_figures(folder: Path, face_data: FaceData, protection: Protection, clean_hacker: ClipModel, mem_hacker: ClipModel,
                      person: int = 0) -> list[Path]:
    """Grad-CAM on one person's clean test face (clean vs MEM-3 hacker) and on a protected photo; IG over a protected caption."""
    from matplotlib import pyplot as plt

    from ..explain import explain_image, explain_text
    from ..plots import plot_image_attention, plot_token_attention

    test, train = face_data.test, face_data.train
    test_image = int(np.flatnonzero(face_data.test_identity == person)[0])
    test_face = test.images([test_image])[0]
    caption = test.captions[int(test.first_rows()[test_image])]
    row = int(train.first_rows()[np.flatnonzero(face_data.train_identity == person)[0]])
    view = protection.apply(train)
    protected_face = view.image_batch([row])[0]
    protected_tokens = view.token_batch([row], mem_hacker.tokenizer, mem_hacker.context_length)[0]
    labelled = [
        ("clean hacker, clean face", explain_image(clean_hacker, test_face, caption)),
        ("MEM-3 hacker, clean face", explain_image(mem_hacker, test_face, caption)),
        ("MEM-3 hacker, protected photo", explain_image(mem_hacker, protected_face, protected_tokens)),
    ]
    image_path, text_path = folder / "attention_image.png", folder / "attention_text.png"
    plt.close(plot_image_attention([replace(e, caption=f"{label}: {e.caption}") for label, e in labelled], show_image=False, save=image_path))
    text = [explain_text(model, protected_face, protected_tokens, trigger_len=protection.trigger_len) for model in (mem_hacker, clean_hacker)]
    plt.close(plot_token_attention(text, labels=[f"MEM-3 hacker (cos = {text[0].score:.2f})", f"clean hacker (cos = {text[1].score:.2f})"],
                                   save=text_path))
    return [image_path, text_path]


def _write_results(out: Path, preset: FacesPreset, face_data: FaceData, source: str, protections: Mapping[str, Protection],
                   results, stages: dict, figures: list[str], hackers: Sequence[Hacker], surrogate_pretrained,
                   pretraining: FaceData | None, pretrain_on) -> dict:
    trained = ", ".join(f"{h.architecture} ({'fine-tuned from ' + str(h.pretrained) if h.pretrained else 'from scratch'})" for h in hackers)
    pretrained_on = "" if pretraining is None else (f" Fine-tuned hackers were pretrained here for {preset.pretrain_epochs} epochs on "
                                                    f"{pretraining.n_people} other people ({pretrain_on}), none of them in the study.")
    seeds = f"{len(preset.seeds)} hacker seeds and " if len(preset.seeds) > 1 else ""
    title = (f"Face case study on {source}: {face_data.n_people} people, {face_data.train.n_images} training photos, "
             f"{face_data.test.n_images} clean test photos. Hackers {trained}, {preset.hacker_epochs} epochs each.{pretrained_on} "
             f"Identification top-k and N x N retrieval R@k in %, mean [95 % bootstrap interval over {seeds}the test faces].")
    table = faces_table(results, TABLE_ROWS, title)
    controls = {f"mem-3 {c}": f"MEM-3 {c}" for c in preset.controls}
    control_table = faces_table(results, {"clean": "Clean", "mem-3": "MEM-3"} | controls, "MEM-3 beside its controls") if controls else ""
    checks = efficacy_checks(results)
    payload = {
        "data": {"source": source, "people": face_data.n_people, "train_photos": face_data.train.n_images,
                 "train_captions": len(face_data.train), "test_photos": face_data.test.n_images},
        "preset": asdict(preset),
        "hackers": {h.label: {"architecture": h.architecture, "weights": h.pretrained,
                        "arms": {arm: {"metrics": r.metrics, "seconds": r.seconds, "history": r.history.to_dict(), "seed_metrics": r.seed_metrics,
                                       "summary": {f"{group}/{key}": r.interval(key).to_dict()
                                                   for group, key, _ in IDENTIFICATION_COLUMNS + RETRIEVAL_COLUMNS}}
                                 for arm, r in results[h.label].items()}}
                    for h in hackers},
        "pretraining": None if pretraining is None else {
            "on": str(pretrain_on), "people": pretraining.n_people, "train_photos": pretraining.train.n_images,
            "held_out_photos": pretraining.test.n_images, "epochs": preset.pretrain_epochs,
            "weights": sorted({h.pretrained for h in hackers if h.pretrained})},
        "protections": {name: {"config": p.config, "diagnostics": p.diagnostics, "example_triggers": p.trigger_words()[:10],
                               "surrogate_pretrained": None if surrogate_pretrained is None else str(surrogate_pretrained)}
                        for name, p in protections.items()},
        "checks": checks,
        "stage_seconds": stages,
        "table": table,
        "control_table": control_table,
        "figures": figures,
    }
    write_json(out / "results.json", payload)
    check_lines = "\n".join(f"- {text}: {'yes' if ok else 'NO'}" for text, ok in checks.items())
    timing = "\n".join(f"| {stage} | {seconds:.0f} |" for stage, seconds in stages.items())
    (out / "results.md").write_text(f"{table}\n\n{control_table}\n\n**Checks**\n\n{check_lines}\n\n"
                                    f"**Time per stage (seconds)**\n\n| stage | seconds |\n|---|---:|\n{timing}\n")
    return payload
