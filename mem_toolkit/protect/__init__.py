"""Protection methods (MEM, EM, UAP) over one shared loop, and the Protection artifact they produce."""
from .artifact import ProtectedDataset, Protection, StrippedView
from .controls import random_id_protection
from .base import ProtectConfig, Protector
from .em import EM
from .mem import MEM
from .uap import UAP

__all__ = ["EM", "MEM", "UAP", "ProtectConfig", "ProtectedDataset", "Protection", "Protector", "StrippedView", "random_id_protection"]
