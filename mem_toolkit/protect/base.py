"""The one protection loop that MEM, EM and UAP configure: surrogate step -> trigger step -> noise step.

Like pytorch-grad-cam's BaseCAM, the shared mechanism lives here and each method is a small
subclass that changes settings or overrides a hook (`prepare_surrogate`). Every random choice flows
from `seed`; a run checkpoints atomically after every outer round and `resume=True` continues it,
giving the same artifact as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state
from ..data.dataset import CaptionDataset
from ..errors import ResumeMismatch
from ..models import ClipModel, create_model, resolve_device
from ..train import adamw, contrastive_step
from .artifact import Protection, ProtectedDataset
from .hotflip import hotflip_step
from .pgd import pgd_noise
from .sharing import sharing_units, sweep_rows
from .vocabulary import allowed_trigger_tokens


@dataclass
class ProtectConfig:
    """Every setting of a protection run (ε and step sizes in 1/255 units)."""

    eps: int = 8
    step_size: int = 1
    pgd_steps: int = 8
    rounds: int = 20
    surrogate_steps: int = 200
    surrogate_lr: float = 1e-4
    surrogate_weight_decay: float = 0.2
    surrogate_model: str = "mem-tiny-rn"
    surrogate_epochs: int = 0  # UAP: epochs of clean training when no surrogate is given
    surrogate_reset: int = 0  # restart the surrogate every N rounds (0: never, as the official code)
    batch_size: int = 128
    trigger_len: int = 0
    trigger_rounds: int = 0
    candidates: int = 16
    beam: int = 1
    trigger_init: str = "random"  # a word repeated k times, or "random" (one random allowed token per position and unit)
    noise_init: str = "zero"  # zero | uniform | trigger-code (each trigger token at each position adds a fixed blocky pattern)
    exclude_caption_vocab: bool = True
    trigger_vocab_size: int = 0  # 0: every allowed token; N: a seeded random subset of N allowed tokens
    shuffle: bool = False
    ascent: bool = False
    granularity: str = "image"  # row | image | cluster
    n_clusters: int = 0
    seed: int = 0
    amp: bool = True


class Protector:
    """Base protector: settings in the constructor, work in `fit`, a `Protection` as the result."""

    method = "protector"
    defaults: dict = {}
    presets: dict[str, dict] = {}

    def __init__(self, preset: str | None = None, device: str | torch.device = "auto", **settings) -> None:
        base = dict(self.defaults)
        if preset is not None:
            if preset not in self.presets:
                raise ValueError(f"unknown preset {preset!r} for {self.method}; choose from {sorted(self.presets)}")
            base.update(self.presets[preset])
        unknown = set(settings) - {f.name for f in fields(ProtectConfig)}
        if unknown:
            raise TypeError(f"unknown setting(s) for {self.method}: {sorted(unknown)}")
        self.config = replace(ProtectConfig(**base), **settings)
        self.device = resolve_device(device)
        self._validate()

    def _validate(self) -> None:
        c = self.config
        if not 0 <= c.eps <= 127:
            raise ValueError(f"eps is in 1/255 units and must be in 0..127, got {c.eps}")
        if c.trigger_len < 0 or c.trigger_rounds < 0 or c.candidates < 1 or c.beam < 1:
            raise ValueError("trigger_len, trigger_rounds >= 0 and candidates, beam >= 1 are required")
        if c.rounds < 1 or c.batch_size < 2:
            raise ValueError("rounds >= 1 and batch_size >= 2 are required")
        if c.pgd_steps < 0 or c.surrogate_steps < 0 or c.surrogate_epochs < 0 or c.step_size < 1:
            raise ValueError("pgd_steps, surrogate_steps, surrogate_epochs >= 0 and step_size >= 1 are required")

    def get_params(self) -> dict:
        return asdict(self.config)

    def __repr__(self) -> str:
        changed = {k: v for k, v in asdict(self.config).items() if v != getattr(ProtectConfig, k, None)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- hooks ---------------------------------------------------------------------------------
    def prepare_surrogate(self, surrogate: ClipModel, dataset: CaptionDataset, progress: bool) -> dict:
        """Called once before the rounds; returns diagnostics. UAP trains the surrogate on clean data here."""
        return {}

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self,
        dataset: CaptionDataset,
        surrogate: ClipModel | None = None,
        *,
        work_dir: str | os.PathLike | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> Protection:
        """Protect `dataset`, returning the Protection; with `work_dir`, checkpoint every round (and resume)."""
        c = self.config
        dataset = dataset.preload(progress=progress)
        if surrogate is None:
            surrogate = create_model(c.surrogate_model, device=self.device, seed=c.seed)
        surrogate.to(self.device)
        tokenizer = surrogate.tokenizer
        if dataset.image_size != surrogate.image_size:
            raise ValueError(f"dataset images are {dataset.image_size} px but the surrogate takes {surrogate.image_size} px")
        state = _RunState.create(self, dataset, surrogate, work_dir)
        given_weights = {k: v.clone() for k, v in surrogate.state_dict().items()} if surrogate.pretrained else None
        optimizer = self._optimizer(surrogate)
        if resume and state.can_resume():
            state.restore(surrogate, optimizer)
        if not state.prepared:
            state.prepare_info = self.prepare_surrogate(surrogate, dataset, progress)
            state.prepared = True
        view = state.protection.apply(dataset)
        allowed = self._allowed_tokens(dataset, tokenizer)
        rounds = tqdm(range(state.rounds_done, c.rounds), desc=f"{self.method} rounds", disable=not progress, unit="round",
                      initial=state.rounds_done, total=c.rounds)
        for round_index in rounds:
            record: dict = {"round": round_index + 1}
            if c.surrogate_reset and round_index and round_index % c.surrogate_reset == 0:
                self._reset_surrogate(surrogate, given_weights, round_index)
                optimizer = self._optimizer(surrogate)
                record["surrogate_reset"] = True
            if c.surrogate_steps:
                record.update(self._surrogate_step(surrogate, optimizer, view, round_index, progress))
            if c.trigger_len and round_index < c.trigger_rounds:
                record.update(self._trigger_step(surrogate, dataset, state, allowed, round_index, progress))
            if c.pgd_steps:
                record.update(self._noise_step(surrogate, dataset, state, round_index, progress))
            record.update(state.trigger_statistics(dataset, tokenizer))
            state.protection.diagnostics.append(record)
            state.rounds_done = round_index + 1
            state.checkpoint(surrogate, optimizer)
            rounds.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("surrogate_loss", "pgd_loss_first", "pgd_loss_last")})
        return state.finish()

    def _optimizer(self, surrogate: ClipModel) -> torch.optim.Optimizer:
        c = self.config
        return adamw(surrogate, c.surrogate_weight_decay, lr=c.surrogate_lr, betas=(0.9, 0.98), eps=1e-6)

    def _reset_surrogate(self, surrogate: ClipModel, given_weights: dict | None, round_index: int) -> None:
        """Back to the given weights, or a fresh random initialisation (new seed per reset), so the noise
        is shaped for models early in training, like a hacker starting from scratch."""
        if given_weights is not None:
            surrogate.load_state_dict(given_weights)
            return
        seed = int(np.random.default_rng([self.config.seed, round_index, 99]).integers(2**31))
        fresh = create_model(surrogate.name, seed=seed, image_size=surrogate.image_size)
        surrogate.clip.load_state_dict(fresh.clip.state_dict())

    def _allowed_tokens(self, dataset: CaptionDataset, tokenizer) -> torch.Tensor:
        c = self.config
        allowed = allowed_trigger_tokens(dataset, tokenizer, c.exclude_caption_vocab, c.trigger_vocab_size, c.seed)
        return torch.from_numpy(allowed).to(self.device)

    def _rng(self, round_index: int, stage: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, round_index, stage])

    def _surrogate_step(self, surrogate: ClipModel, optimizer, view: ProtectedDataset, round_index: int, progress: bool) -> dict:
        """S steps of AdamW on aligned protected pairs (gradients zeroed every step)."""
        c = self.config
        rng = self._rng(round_index, 0)
        surrogate.train()
        losses, started = [], time.perf_counter()
        for _ in tqdm(range(c.surrogate_steps), desc="surrogate", disable=not progress, leave=False):
            rows = rng.choice(len(view), size=min(c.batch_size, len(view)), replace=False)
            losses.append(contrastive_step(surrogate, optimizer, view, rows, c.amp))
        return {"surrogate_loss": float(np.mean(losses)), "surrogate_loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
                "surrogate_seconds": time.perf_counter() - started}

    def _batches(self, dataset: CaptionDataset, round_index: int, stage: int) -> list[np.ndarray]:
        rows = sweep_rows(dataset, self.config.granularity, self._rng(round_index, stage))
        size = self.config.batch_size
        return [rows[i:i + size] for i in range(0, len(rows), size) if len(rows[i:i + size]) >= 2]

    def _trigger_step(self, surrogate: ClipModel, dataset: CaptionDataset, state: "_RunState", allowed, round_index: int, progress: bool) -> dict:
        """HotFlip over every unit once, image features computed once per batch."""
        c = self.config
        protection = state.protection
        view = protection.apply(dataset, trigger=False)
        caption_ids = dataset.caption_token_ids(surrogate.tokenizer)
        before, after, started = [], [], time.perf_counter()
        for rows in tqdm(self._batches(dataset, round_index, 1), desc="trigger step", disable=not progress, leave=False):
            units, local = np.unique(protection.unit_of_row[rows], return_inverse=True)
            with torch.no_grad():
                image_features = surrogate.eval().encode_image(view.image_batch(rows).to(self.device)).float()
            result = hotflip_step(surrogate, image_features, [caption_ids[r] for r in rows], torch.from_numpy(protection.triggers[units]),
                                  torch.from_numpy(local), allowed, candidates=c.candidates, beam=c.beam)
            protection.triggers[units] = result.triggers.numpy()
            before.append(result.loss_before)
            after.append(result.loss_after)
        return {"hotflip_loss_before": float(np.mean(before)), "hotflip_loss_after": float(np.mean(after)),
                "trigger_seconds": time.perf_counter() - started}

    def _noise_step(self, surrogate: ClipModel, dataset: CaptionDataset, state: "_RunState", round_index: int, progress: bool) -> dict:
        """P PGD steps per batch, warm-started from the stored noise; captions re-shuffled every step if `shuffle`."""
        c = self.config
        protection = state.protection
        caption_ids = dataset.caption_token_ids(surrogate.tokenizer)
        rng = self._rng(round_index, 2)
        first, last, started = [], [], time.perf_counter()
        for rows in tqdm(self._batches(dataset, round_index, 3), desc="noise step", disable=not progress, leave=False):
            units, local = np.unique(protection.unit_of_row[rows], return_inverse=True)
            prefix = protection.triggers[protection.unit_of_row[rows]] if c.trigger_len else None

            def tokens_for_step(_step: int, rows=rows, prefix=prefix) -> torch.Tensor:
                order = rng.permutation(len(rows)) if c.shuffle else np.arange(len(rows))
                return surrogate.tokenizer.assemble([caption_ids[r] for r in rows[order]], surrogate.context_length, prefix=prefix)

            noise = torch.from_numpy(np.asarray(protection.noise[units])).permute(0, 3, 1, 2)
            noise, losses = pgd_noise(surrogate, dataset.image_batch(rows), noise, torch.from_numpy(local), tokens_for_step,
                                      eps=c.eps, steps=c.pgd_steps, step_size=c.step_size, ascent=c.ascent, amp=c.amp)
            protection.noise[units] = noise.permute(0, 2, 3, 1).to(torch.int8).cpu().numpy()
            first.append(losses[0])
            last.append(losses[-1])
        return {"pgd_loss_first": float(np.mean(first)), "pgd_loss_last": float(np.mean(last)), "noise_seconds": time.perf_counter() - started}


@dataclass
class _RunState:
    """The in-progress protection plus what a resumed run needs; checkpointed atomically each round."""

    protector: Protector
    protection: Protection
    work_dir: Path | None
    rounds_done: int = 0
    prepared: bool = False
    prepare_info: dict = field(default_factory=dict)

    @classmethod
    def create(cls, protector: Protector, dataset: CaptionDataset, surrogate: ClipModel, work_dir) -> "_RunState":
        c = protector.config
        unit_of_row = sharing_units(dataset, c.granularity, c.n_clusters, c.seed)
        n_units = int(unit_of_row.max()) + 1
        shape = (n_units, dataset.image_size, dataset.image_size, 3)
        work_dir = Path(work_dir) if work_dir is not None else None
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
            noise = np.lib.format.open_memmap(work_dir / "noise.work.npy", mode="w+", dtype=np.int8, shape=shape)
        else:
            noise = np.zeros(shape, dtype=np.int8)
        triggers = _initial_triggers(protector, dataset, surrogate.tokenizer, n_units)
        _initialise_noise(noise, triggers, dataset, unit_of_row, c)
        config = asdict(c) | {"surrogate_name": surrogate.name, "surrogate_pretrained": surrogate.pretrained}
        protection = Protection(protector.method, noise, triggers, unit_of_row, c.eps, dataset.image_size, dataset.fingerprint(), config)
        return cls(protector, protection, work_dir)

    @property
    def state_path(self) -> Path | None:
        return None if self.work_dir is None else self.work_dir / "state.safetensors"

    def can_resume(self) -> bool:
        return self.state_path is not None and self.state_path.exists()

    def checkpoint(self, surrogate: ClipModel, optimizer) -> None:
        """Snapshot the noise under a per-round name, then write the state that points at it, then drop older snapshots."""
        if self.work_dir is None:
            return
        noise_file = self.work_dir / f"noise.round{self.rounds_done:04d}.npy"
        self.protection.noise.flush()
        tmp = noise_file.with_name(noise_file.name + ".tmp")
        shutil.copyfile(self.work_dir / "noise.work.npy", tmp)
        os.replace(tmp, noise_file)
        opt_tensors, opt_info = optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in surrogate.clip.state_dict().items()} | opt_tensors
        tensors["triggers"] = torch.from_numpy(np.ascontiguousarray(self.protection.triggers))
        save_state(self.state_path, tensors, {
            "rounds_done": self.rounds_done, "noise_file": noise_file.name, "optimizer": opt_info,
            "diagnostics": self.protection.diagnostics, "config": self.protection.config,
            "fingerprint": self.protection.fingerprint, "prepared": self.prepared, "prepare_info": self.prepare_info,
        })
        for old in self.work_dir.glob("noise.round*.npy"):
            if old.name != noise_file.name:
                old.unlink()

    def restore(self, surrogate: ClipModel, optimizer) -> None:
        tensors, info = load_state(self.state_path)
        if info["fingerprint"] != self.protection.fingerprint:
            raise ResumeMismatch(f"cannot resume from {self.state_path}: it was made for another dataset")
        if json.loads(json.dumps(info["config"])) != json.loads(json.dumps(self.protection.config)):
            raise ResumeMismatch(f"cannot resume from {self.state_path}: its settings differ from this run's")
        surrogate.clip.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        restore_optimizer(optimizer, tensors, info["optimizer"])
        self.protection.triggers[:] = tensors["triggers"].numpy()
        self.protection.noise[:] = np.load(self.work_dir / info["noise_file"], mmap_mode="r")
        self.protection.diagnostics = info["diagnostics"]
        self.rounds_done = int(info["rounds_done"])
        self.prepared = bool(info["prepared"])
        self.prepare_info = info["prepare_info"]

    def trigger_statistics(self, dataset: CaptionDataset, tokenizer) -> dict:
        """Unique triggers and the share of trigger tokens that are caption words (a trigger must be a key)."""
        triggers = self.protection.triggers
        if triggers.shape[1] == 0:
            return {}
        vocabulary = tokenizer.vocabulary_of(dataset.caption_token_ids(tokenizer))
        return {"unique_triggers": int(len(np.unique(triggers, axis=0))), "distinct_trigger_tokens": int(len(np.unique(triggers))),
                "caption_vocab_share": float(np.isin(triggers, vocabulary).mean())}

    def finish(self) -> Protection:
        protection = self.protection
        protection.config = protection.config | {"prepare": self.prepare_info}
        return protection


NOISE_INITS = ("zero", "uniform", "trigger-code")


def _initialise_noise(noise: np.ndarray, triggers: np.ndarray, dataset: CaptionDataset, unit_of_row: np.ndarray, c: ProtectConfig) -> None:
    """Fill the starting noise in place, unit by unit (the store may be a memory map).

    `trigger-code` makes the noise a code of the trigger from the start: every (position, token) pair
    owns a fixed random pattern of ε/k-sized 8x8-pixel blocks, and a unit's noise is the sum over
    its trigger. A fresh model can read such a code linearly, which is what a shortcut needs.
    """
    if c.noise_init not in NOISE_INITS:
        raise ValueError(f"unknown noise_init {c.noise_init!r}; choose from {NOISE_INITS}")
    if c.noise_init == "zero" or c.eps == 0:
        return
    size = noise.shape[1]
    if c.noise_init == "trigger-code" and triggers.shape[1] == 0:
        raise ValueError("noise_init='trigger-code' needs a trigger (trigger_len >= 1)")
    image_of_unit = np.zeros(len(noise), dtype=np.int64)
    image_of_unit[unit_of_row] = dataset.group_ids
    blocks = max(1, size // 8)
    for unit in range(len(noise)):
        if c.noise_init == "uniform":
            values = np.random.default_rng([c.seed, unit, 5]).uniform(-c.eps, c.eps, noise.shape[1:])
        else:
            values = np.zeros(noise.shape[1:])
            for position, token in enumerate(triggers[unit]):
                signs = np.random.default_rng([c.seed, position, int(token), 6]).choice([-1.0, 1.0], size=(blocks, blocks, 3))
                values += np.kron(signs, np.ones((size // blocks, size // blocks, 1)))[:size, :size] * c.eps / triggers.shape[1]
        pixels = dataset.images([image_of_unit[unit]])[0].astype(np.int16)
        noise[unit] = np.clip(np.clip(np.rint(values), -c.eps, c.eps), -pixels, 255 - pixels).astype(np.int8)


def _initial_triggers(protector: Protector, dataset: CaptionDataset, tokenizer, n_units: int) -> np.ndarray:
    c = protector.config
    if c.trigger_len == 0:
        return np.zeros((n_units, 0), dtype=np.int64)
    if c.trigger_init == "random":
        allowed = protector._allowed_tokens(dataset, tokenizer).cpu().numpy()
        return np.random.default_rng([c.seed, 7919]).choice(allowed, size=(n_units, c.trigger_len))
    ids = tokenizer.encode(c.trigger_init)
    if len(ids) != 1:
        raise ValueError(f"trigger_init {c.trigger_init!r} is not a single token")
    return np.full((n_units, c.trigger_len), ids[0], dtype=np.int64)
