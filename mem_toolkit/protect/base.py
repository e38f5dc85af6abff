"""The one protection loop that MEM, EM and UAP configure: surrogate step -> trigger step -> noise step.

Like pytorch-grad-cam's BaseCAM, the shared mechanism lives here and each method is a small
subclass that changes settings or overrides a hook (`prepare_surrogate`). Every random choice flows
from `seed`; a run checkpoints atomically after every outer round and `resume=True` continues it,
giving the same artifact as an uninterrupted run.

Under torchrun (`mem_toolkit.distributed`) the surrogate trains with DDP on the same global batches,
the HotFlip and PGD sweeps split their batches over the ranks (`sharing.sweep_batches`: each unit is
swept by one rank, which writes only its own units into the shared noise memory map; triggers are
merged after the trigger step), rank 0 writes the checkpoints, and every stage ends with all ranks in step.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import atomic_write
from ..checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state
from ..data.dataset import CaptionDataset, require_images
from ..errors import OutputError, ResumeMismatch
from ..models import ClipModel, check_model_name, create_model, resolve_device
from ..train import adamw, contrastive_step
from .artifact import Protection, ProtectedDataset
from .diagnostics import shortcut_report
from .eot import eot_transform
from .hotflip import hotflip_step
from .pgd import frozen_for_pgd, pgd_noise
from .sharing import sharing_units, sweep_batches, sweep_rows
from .vocabulary import allowed_trigger_tokens
from .word_code import WordCode, distinctive_words


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
    surrogate_alternate: bool = False  # with given (pretrained) weights: every other restart is a fresh random init instead
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
    cluster_size: int = 0  # cluster granularity: about this many images per cluster (overrides n_clusters)
    noise_block: int = 1  # the noise is constant on noise_block x noise_block pixel squares (1: per pixel)
    code_block: int = 8  # noise_init="trigger-code" / "caption-code": side of the squares of each code pattern
    code_words: int = 3  # noise_init="caption-code": caption words coded per unit
    code_min_share: float = 0.0  # caption-code / noise_code="words": code only words found in at least this share of the photos
    noise_code: str = "none"  # "words": the noise is a learned code of each unit's caption words (protect.word_code), not free per unit
    code_lr: float = 0.05  # noise_code="words": Adam's learning rate on the word patterns (pgd_steps steps per batch)
    code_ensemble: tuple[str, ...] = ()  # noise_code="words": more architectures, a fresh one each round trained as the surrogate, that the code must also steer
    strip_share: float = 0.0  # share of rows seen with the trigger deleted and their own caption, in surrogate training and PGD
    eot: tuple[str, ...] = ()  # PGD and word-code steps: one of these hacker transformations ("jpeg", "crop-flip") drawn per step, differentiated through
    seed: int = 0
    amp: bool = True


LIST_SETTINGS = tuple(f.name for f in fields(ProtectConfig) if isinstance(f.default, tuple))  # given as lists of names

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
        for name in LIST_SETTINGS:
            value = getattr(self.config, name)
            if isinstance(value, str):  # iterated, "crop-flip" would read as nine unknown letters
                raise ValueError(f"{name} is a list of names, e.g. ({value!r},), not one string")
            setattr(self.config, name, tuple(value))  # JSON and the command line give lists
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
        if c.noise_block < 1 or c.code_block < 1 or c.cluster_size < 0:
            raise ValueError("noise_block, code_block >= 1 and cluster_size >= 0 are required")
        if not 0.0 <= c.strip_share <= 1.0:
            raise ValueError(f"strip_share is a share of rows and must be in 0..1, got {c.strip_share}")
        if c.noise_code not in NOISE_CODES:
            raise ValueError(f"unknown noise_code {c.noise_code!r}; choose from {NOISE_CODES}")
        if c.noise_code == "words" and (c.noise_init != "zero" or c.noise_block != 1 or c.ascent):
            raise ValueError("noise_code='words' builds the noise from its word patterns: it takes no noise_init, noise_block or ascent")
        if c.code_ensemble and c.noise_code != "words":
            raise ValueError("code_ensemble trains the word code against more architectures: it needs noise_code='words'")
        for name in c.code_ensemble:
            check_model_name(name)  # an unknown architecture is refused now, not in round one
        if c.surrogate_alternate and not c.surrogate_reset:
            raise ValueError("surrogate_alternate alternates the surrogate's restarts: it needs surrogate_reset >= 1")
        eot_transform(c.eot, (0,))  # refuses unknown names now, not in round one

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
        progress = progress and distributed.is_main()
        self._check_processes(work_dir)
        dataset = dataset.preload(progress=progress)
        require_images(dataset, 2)
        if surrogate is None:
            surrogate = create_model(c.surrogate_model, device=self.device, seed=c.seed)
        surrogate.to(self.device)
        tokenizer = surrogate.tokenizer
        if dataset.image_size != surrogate.image_size:
            raise ValueError(f"dataset images are {dataset.image_size} px but the surrogate takes {surrogate.image_size} px")
        if c.surrogate_alternate and not surrogate.pretrained:
            raise ValueError("surrogate_alternate alternates between given weights and fresh ones: start from a pretrained surrogate")
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
        replica = distributed.replicate(surrogate)
        rounds = tqdm(range(state.rounds_done, c.rounds), desc=f"{self.method} rounds", disable=not progress, unit="round",
                      initial=state.rounds_done, total=c.rounds)
        for round_index in rounds:
            record: dict = {"round": round_index + 1, "processes": distributed.world_size()}
            if c.surrogate_reset and round_index and round_index % c.surrogate_reset == 0:
                self._reset_surrogate(surrogate, given_weights, round_index)
                optimizer = self._optimizer(surrogate)
                record["surrogate_reset"] = True
            round_view = self._surrogate_view(view, round_index)
            if c.surrogate_steps:
                record.update(self._surrogate_step(surrogate, replica, optimizer, round_view, round_index, progress))
            if c.trigger_len and round_index < c.trigger_rounds:
                record.update(self._trigger_step(surrogate, dataset, state, allowed, round_index, progress))
            if c.pgd_steps and state.code is not None:
                ensemble, ensemble_losses = self._code_ensemble(surrogate, round_view, round_index, progress)
                if ensemble:
                    record["ensemble_surrogate_losses"] = ensemble_losses
                record.update(self._code_step([surrogate, *ensemble], dataset, state, round_index, progress))
            elif c.pgd_steps:
                record.update(self._noise_step(surrogate, dataset, state, round_index, progress))
            record.update(state.trigger_statistics(dataset, tokenizer))
            state.protection.diagnostics.append(record)
            state.rounds_done = round_index + 1
            if distributed.is_main():
                state.checkpoint(surrogate, optimizer)
            distributed.barrier()  # nobody writes the next round's noise while rank 0 copies this one's
            rounds.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("surrogate_loss", "pgd_loss_first", "pgd_loss_last")})
        return state.finish(shortcut_report(surrogate, dataset, state.protection, c.batch_size, c.seed))

    def _check_processes(self, work_dir) -> None:
        """Refuse what several processes cannot share: noise held in one process's RAM."""
        if distributed.world_size() == 1:
            return
        if self.config.noise_code != "none":
            raise ValueError("noise_code='words' runs in one process: its word patterns are shared by every unit's noise")
        if work_dir is None:
            raise ValueError("a protection run by several processes needs work_dir: its noise is a memory map there that every process writes into")

    def _optimizer(self, surrogate: ClipModel) -> torch.optim.Optimizer:
        c = self.config
        return adamw(surrogate, c.surrogate_weight_decay, lr=c.surrogate_lr, betas=(0.9, 0.98), eps=1e-6)

    def _reset_surrogate(self, surrogate: ClipModel, given_weights: dict | None, round_index: int) -> None:
        """Back to the given weights, or a fresh random initialisation (new seed per reset), so the noise
        is shaped for models early in training, like a hacker starting from scratch. `surrogate_alternate`
        takes turns, so one noise must mislead both a model that knows the content and one that does not."""
        fresh_turn = self.config.surrogate_alternate and (round_index // self.config.surrogate_reset) % 2 == 1
        if given_weights is not None and not fresh_turn:
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

    def _surrogate_view(self, view: ProtectedDataset, round_index: int) -> ProtectedDataset:
        """The protected pairs the surrogate trains on this round: with `strip_share`, a fresh random share of
        rows without their trigger, so the surrogate learns what the noise alone says about the caption."""
        share = self.config.strip_share
        if not share or not view.use_trigger:
            return view
        stripped = self._rng(round_index, 4).random(len(view)) < share
        return ProtectedDataset(view.base, view.protection, stripped=stripped)

    def _surrogate_step(self, surrogate: ClipModel, replica, optimizer, view: ProtectedDataset, round_index: int, progress: bool) -> dict:
        """S steps of AdamW on aligned protected pairs (gradients zeroed every step); `replica` is the surrogate or its DDP wrapper."""
        c = self.config
        rng = self._rng(round_index, 0)
        surrogate.train()
        losses, started = [], time.perf_counter()
        for _ in tqdm(range(c.surrogate_steps), desc="surrogate", disable=not progress, leave=False):
            rows = rng.choice(len(view), size=min(c.batch_size, len(view)), replace=False)
            losses.append(contrastive_step(replica, optimizer, view, rows, c.amp))
        distributed.sync_buffers(surrogate)  # every rank sweeps with rank 0's BatchNorm statistics, the ones checkpointed
        return {"surrogate_loss": float(np.mean(losses)), "surrogate_loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
                "surrogate_seconds": time.perf_counter() - started}

    def _batches(self, dataset: CaptionDataset, unit_of_row: np.ndarray, round_index: int, stage: int) -> list[tuple[int, np.ndarray]]:
        """The sweep's batches with the rank that sweeps each, planned for this run's number of processes."""
        rows = sweep_rows(dataset, self.config.granularity, self._rng(round_index, stage))
        return sweep_batches(rows, unit_of_row, self.config.batch_size, self._sweep_processes(), self.config.granularity == "cluster")

    def _sweep_processes(self) -> int:
        """How many processes the sweeps are planned for: the run's."""
        return distributed.world_size()

    def _caption_orders(self, batches: list[tuple[int, np.ndarray]], round_index: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Every batch's caption order for each PGD step (shuffled if `shuffle`) and, with `strip_share`, its
        stripped rows; drawn in batch order from one generator, so a batch gets the same orders whichever
        rank sweeps it (and as in one process).

        A stripped row has no trigger and keeps its own caption (EM's objective: the noise must key the
        caption itself), the others are shuffled among themselves as MEM does, so the noise keys the
        trigger and still protects once a hacker deletes it.
        """
        c = self.config
        rng = self._rng(round_index, 2)
        stripping = bool(c.strip_share and c.trigger_len)
        orders = []
        for _, rows in batches:
            steps, stripped = [], []
            for _ in range(c.pgd_steps):
                strip = rng.random(len(rows)) < c.strip_share if stripping else np.zeros(len(rows), dtype=bool)
                shuffled = np.flatnonzero(~strip)
                order = np.arange(len(rows))
                if c.shuffle:
                    order[shuffled] = shuffled[rng.permutation(len(shuffled))]
                steps.append(order)
                stripped.append(strip)
            orders.append((np.stack(steps), np.stack(stripped) if stripping else None))
        return orders

    def _trigger_step(self, surrogate: ClipModel, dataset: CaptionDataset, state: "_RunState", allowed, round_index: int, progress: bool) -> dict:
        """HotFlip over every unit once, image features computed once per batch."""
        c = self.config
        protection = state.protection
        view = protection.apply(dataset, trigger=False)
        caption_ids = dataset.caption_token_ids(surrogate.tokenizer)
        losses, started = {}, time.perf_counter()
        start_triggers = protection.triggers.copy()
        for index, rows in tqdm(_mine(self._batches(dataset, protection.unit_of_row, round_index, 1)), desc="trigger step", disable=not progress,
                                leave=False):
            units, local = np.unique(protection.unit_of_row[rows], return_inverse=True)
            with torch.no_grad():
                image_features = surrogate.eval().encode_image(view.image_batch(rows).to(self.device)).float()
            result = hotflip_step(surrogate, image_features, [caption_ids[r] for r in rows], torch.from_numpy(protection.triggers[units]),
                                  torch.from_numpy(local), allowed, candidates=c.candidates, beam=c.beam)
            protection.triggers[units] = result.triggers.numpy()
            losses[index] = (result.loss_before, result.loss_after)
        # ranks changed disjoint units, so the sum of their changes is every rank's update
        protection.triggers[:] = start_triggers + distributed.sum_over_ranks(protection.triggers - start_triggers)
        before, after = _in_batch_order(losses)
        return {"hotflip_loss_before": float(np.mean(before)), "hotflip_loss_after": float(np.mean(after)),
                "trigger_seconds": time.perf_counter() - started}

    def _noise_step(self, surrogate: ClipModel, dataset: CaptionDataset, state: "_RunState", round_index: int, progress: bool) -> dict:
        """P PGD steps per batch, warm-started from the stored noise; captions re-shuffled every step if `shuffle`."""
        c = self.config
        protection = state.protection
        caption_ids = dataset.caption_token_ids(surrogate.tokenizer)
        batches = self._batches(dataset, protection.unit_of_row, round_index, 3)
        orders = self._caption_orders(batches, round_index)
        losses, started = {}, time.perf_counter()
        with frozen_for_pgd(surrogate, c.amp):  # weights fixed for the whole sweep: fold once
            for index, rows in tqdm(_mine(batches), desc="noise step", disable=not progress, leave=False):
                units, local = np.unique(protection.unit_of_row[rows], return_inverse=True)
                prefix = protection.triggers[protection.unit_of_row[rows]] if c.trigger_len else None

                def tokens_for_step(step: int, rows=rows, prefix=prefix, order=orders[index][0], stripped=orders[index][1]) -> torch.Tensor:
                    return surrogate.tokenizer.assemble([caption_ids[r] for r in rows[order[step]]], surrogate.context_length, prefix=prefix,
                                                        with_prefix=None if stripped is None else ~stripped[step])

                noise = torch.from_numpy(np.asarray(protection.noise[units])).permute(0, 3, 1, 2)
                noise, step_losses = pgd_noise(surrogate, dataset.image_batch(rows), noise, torch.from_numpy(local), tokens_for_step,
                                          eps=c.eps, steps=c.pgd_steps, step_size=c.step_size, ascent=c.ascent, amp=c.amp, block=c.noise_block,
                                          transform=eot_transform(c.eot, (c.seed, round_index, index)))
                protection.noise[units] = noise.permute(0, 2, 3, 1).to(torch.int8).cpu().numpy()
                losses[index] = (step_losses[0], step_losses[-1])
        if isinstance(protection.noise, np.memmap):
            protection.noise.flush()
        first, last = _in_batch_order(losses)  # also the barrier: every rank's units are written
        return {"pgd_loss_first": float(np.mean(first)), "pgd_loss_last": float(np.mean(last)), "noise_seconds": time.perf_counter() - started}

    def _code_ensemble(self, surrogate: ClipModel, round_view: ProtectedDataset, round_index: int,
                       progress: bool) -> tuple[list[ClipModel], list[float]]:
        """This round's fresh `code_ensemble` surrogates, each trained as the surrogate was (its steps, on this round's
        protected pairs), and their mean training losses. Made anew every round from the seed, so a resumed run remakes them."""
        models, losses = [], []
        for i, name in enumerate(self.config.code_ensemble):
            seed = int(np.random.default_rng([self.config.seed, round_index, 98, i]).integers(2**31))
            model = create_model(name, device=self.device, seed=seed, image_size=surrogate.image_size)
            trained = self._surrogate_step(model, model, self._optimizer(model), round_view, round_index, progress)
            models.append(model)
            losses.append(trained["surrogate_loss"])
        return models, losses

    def _code_step(self, surrogates: list[ClipModel], dataset: CaptionDataset, state: "_RunState", round_index: int,
                   progress: bool) -> dict:
        """`pgd_steps` Adam steps on the word patterns per batch and surrogate (one caption per unit, its own, no trigger:
        the code keys the caption words), then every unit's stored noise rebuilt from the code. One process: the patterns
        are shared by all units, so the batches cannot be split over ranks without summing their gradients."""
        c = self.config
        protection, code = state.protection, state.code
        rng = self._rng(round_index, 3)
        by_unit = np.argsort(protection.unit_of_row, kind="stable")  # each unit's rows in row order, in one pass
        rows_of_unit = np.split(by_unit, np.cumsum(np.bincount(protection.unit_of_row, minlength=protection.n_units))[:-1])
        order = rng.permutation(protection.n_units)
        losses, started = [], time.perf_counter()
        batches = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size) if len(order[i:i + c.batch_size]) >= 2]
        for index, units in enumerate(tqdm(batches, desc="code step", disable=not progress, leave=False)):
            rows = np.array([rng.choice(rows_of_unit[unit]) for unit in units])
            pixels, transform = dataset.image_batch(rows), eot_transform(c.eot, (c.seed, round_index, index))
            for surrogate in surrogates:
                tokens = dataset.token_batch(rows, surrogate.tokenizer, surrogate.context_length)
                step_losses = code.train_batch(surrogate, pixels, units, tokens, c.pgd_steps, c.amp, transform=transform)
                losses.append((step_losses[0], step_losses[-1]))
        for start in range(0, protection.n_units, c.batch_size):
            units = np.arange(start, min(start + c.batch_size, protection.n_units))
            images = np.array([rows_of_unit[unit][0] for unit in units])
            protection.noise[units] = code.int_noise(units, dataset.images(dataset.group_ids[images]))
        if isinstance(protection.noise, np.memmap):
            protection.noise.flush()
        first, last = zip(*losses)
        return {"pgd_loss_first": float(np.mean(first)), "pgd_loss_last": float(np.mean(last)), "noise_seconds": time.perf_counter() - started}


def _mine(batches: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    """(index, rows) of the batches this rank sweeps; a plan made for more processes than run is swept whole by rank r's share (owner mod size)."""
    return [(index, rows) for index, (owner, rows) in enumerate(batches) if owner % distributed.world_size() == distributed.rank()]


def _in_batch_order(values: dict[int, tuple]) -> tuple[list, ...]:
    """Per-batch values from every rank (batch index -> tuple), merged and put in batch order, as columns."""
    merged = {index: value for part in distributed.all_gather_object(values) for index, value in part.items()}
    return tuple(list(column) for column in zip(*(merged[i] for i in sorted(merged)))) if merged else ([], [])


@dataclass
class _RunState:
    """The in-progress protection plus what a resumed run needs; checkpointed atomically each round."""

    protector: Protector
    protection: Protection
    work_dir: Path | None
    rounds_done: int = 0
    prepared: bool = False
    prepare_info: dict = field(default_factory=dict)
    code: WordCode | None = None  # noise_code="words": the learned word code the noise is built from

    @classmethod
    def create(cls, protector: Protector, dataset: CaptionDataset, surrogate: ClipModel, work_dir) -> "_RunState":
        c = protector.config
        unit_of_row = sharing_units(dataset, c.granularity, c.n_clusters, c.seed, c.cluster_size)
        n_units = int(unit_of_row.max()) + 1
        shape = (n_units, dataset.image_size, dataset.image_size, 3)
        work_dir = Path(work_dir) if work_dir is not None else None
        triggers = _initial_triggers(protector, dataset, surrogate.tokenizer, n_units)
        if work_dir is not None:
            noise = distributed.main_first(lambda: _open_noise(work_dir, shape, lambda n: _initialise_noise(n, triggers, dataset, unit_of_row, c)))
        else:
            noise = np.zeros(shape, dtype=np.int8)
            _initialise_noise(noise, triggers, dataset, unit_of_row, c)
        config = asdict(c) | {"surrogate_name": surrogate.name, "surrogate_pretrained": surrogate.pretrained}
        protection = Protection(protector.method, noise, triggers, unit_of_row, c.eps, dataset.image_size, dataset.fingerprint(), config)
        code = None
        if c.noise_code == "words":
            code = WordCode(distinctive_words(dataset, unit_of_row, n_units, c.code_words, c.code_min_share), dataset.image_size, c.eps,
                            c.code_lr, protector.device)
        return cls(protector, protection, work_dir, code=code)

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
        atomic_write(noise_file, lambda tmp: shutil.copyfile(self.work_dir / "noise.work.npy", tmp))
        opt_tensors, opt_info = optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in surrogate.clip.state_dict().items()} | opt_tensors
        tensors["triggers"] = torch.from_numpy(np.ascontiguousarray(self.protection.triggers))
        code_info = None
        if self.code is not None:
            code_tensors, code_info = optimizer_tensors(self.code.optimizer, prefix="code_optim.")
            tensors |= code_tensors | {"code_patterns": self.code.patterns.detach()}
        try:
            save_state(self.state_path, tensors, {
                "rounds_done": self.rounds_done, "noise_file": noise_file.name, "optimizer": opt_info,
                "diagnostics": self.protection.diagnostics, "config": self.protection.config,
                "fingerprint": self.protection.fingerprint, "prepared": self.prepared, "prepare_info": self.prepare_info,
                "processes": distributed.world_size(), "code_optimizer": code_info,
            })
        except OutputError:  # the previous state and the snapshot it points at stay; this round's snapshot goes
            noise_file.unlink(missing_ok=True)
            raise
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
        if self.code is not None:
            with torch.no_grad():
                self.code.patterns.copy_(tensors["code_patterns"])
            restore_optimizer(self.code.optimizer, tensors, info["code_optimizer"], prefix="code_optim.")
        if distributed.is_main():  # the noise map is shared: one process copies the snapshot into it
            self.protection.noise[:] = np.load(self.work_dir / info["noise_file"], mmap_mode="r")
            self.protection.noise.flush()
        distributed.barrier()
        saved_processes = info.get("processes", 1)
        if saved_processes != distributed.world_size() and distributed.is_main():
            warnings.warn(f"resuming {self.state_path}, checkpointed by {saved_processes} process(es), with {distributed.world_size()}: "
                          "the remaining rounds are a correct continuation, but not bit for bit what the first run would have made "
                          "(the surrogate's gradient sums and per-process BatchNorm statistics depend on the number of processes)",
                          stacklevel=2)
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

    def finish(self, shortcut: dict) -> Protection:
        """The finished protection, its config carrying the surrogate preparation and the end-of-run shortcut report."""
        protection = self.protection
        protection.config = protection.config | {"prepare": self.prepare_info, "shortcut": shortcut}
        return protection


NOISE_INITS = ("zero", "uniform", "trigger-code", "caption-code")
NOISE_CODES = ("none", "words")


def _open_noise(work_dir: Path, shape: tuple[int, ...], initialise) -> np.memmap:
    """The run's int8 noise memory map: rank 0 (or the only process) creates and initialises it, the other ranks open it r+."""
    path = work_dir / "noise.work.npy"
    if not distributed.is_main():
        return np.lib.format.open_memmap(path, mode="r+")
    work_dir.mkdir(parents=True, exist_ok=True)
    noise = np.lib.format.open_memmap(path, mode="w+", dtype=np.int8, shape=shape)
    initialise(noise)
    noise.flush()
    return noise


def _initialise_noise(noise: np.ndarray, triggers: np.ndarray, dataset: CaptionDataset, unit_of_row: np.ndarray, c: ProtectConfig) -> None:
    """Fill the starting noise in place, unit by unit (the store may be a memory map).

    `trigger-code` makes the noise a code of the trigger from the start: every (position, token) pair
    owns a fixed random sign pattern on `code_block` x `code_block` pixel squares, and a unit's noise
    is the sum over its trigger, each pattern ε/k high. A fresh model can read such a code linearly,
    which is what a shortcut needs. `caption-code` is the same code of the unit's `code_words` most
    distinctive caption words (TF-IDF): a key to the captions themselves, which a hacker who deletes
    the trigger still trains on.
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
    blocks = -(-size // c.code_block)
    if c.noise_init == "trigger-code":
        code_keys = [[[position, int(token)] for position, token in enumerate(trigger)] for trigger in triggers]
    elif c.noise_init == "caption-code":
        code_keys = [[[zlib.crc32(word.encode())] for word in words] for words in distinctive_words(dataset, unit_of_row, len(noise), c.code_words, c.code_min_share)]
    for unit in range(len(noise)):
        if c.noise_init == "uniform":
            values = np.random.default_rng([c.seed, unit, 5]).uniform(-c.eps, c.eps, noise.shape[1:])
        else:
            values = np.zeros(noise.shape[1:])
            for key in code_keys[unit]:
                signs = np.random.default_rng([c.seed, *key, 6]).choice([-1.0, 1.0], size=(blocks, blocks, 3))
                values += np.kron(signs, np.ones((c.code_block, c.code_block, 1)))[:size, :size] * c.eps / max(1, len(code_keys[unit]))
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
