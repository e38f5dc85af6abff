"""UAP: sample-wise error-MAXIMISING noise on a surrogate trained on clean data (one pass, aligned captions)."""
from __future__ import annotations

from ..data.dataset import CaptionDataset
from ..models import ClipModel
from ..train import TrainConfig, train_clip
from .base import Protector


class UAP(Protector):
    """Untargeted adversarial perturbation: sign ascent of the CLIP loss, no surrogate updates during the pass."""

    method = "uap"
    defaults = dict(trigger_len=0, trigger_rounds=0, shuffle=False, ascent=True, rounds=1, surrogate_steps=0, pgd_steps=8,
                    surrogate_epochs=10)
    presets = {
        "paper": dict(pgd_steps=8, surrogate_epochs=32, batch_size=128, eps=8, granularity="row"),
        # measured on the embedded shapes: a surrogate trained one epoch gives stronger noise than a converged one
        "cpu": dict(pgd_steps=5, step_size=2, surrogate_epochs=1, batch_size=128, eps=8),
    }

    def prepare_surrogate(self, surrogate: ClipModel, dataset: CaptionDataset, progress: bool) -> dict:
        """Train the surrogate on the clean data first, unless weights were given (a pretrained or trained model)."""
        if surrogate.pretrained is not None or self.config.surrogate_epochs == 0 or getattr(surrogate, "trained", False):
            return {"surrogate_training": "given"}
        config = TrainConfig(epochs=self.config.surrogate_epochs, batch_size=self.config.batch_size, seed=self.config.seed, amp=self.config.amp)
        history = train_clip(surrogate, dataset, None, config, progress=progress, description="UAP surrogate")
        return {"surrogate_training": "clean", "surrogate_epochs": self.config.surrogate_epochs, "surrogate_final_loss": history.final["loss"]}
