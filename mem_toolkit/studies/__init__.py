"""The studies (demo, transferability, faces, robustness) and the grid they share: arms x hackers x seeds -> tables with intervals."""
from .grid import Arm, GridResult, Hacker, run_grid

__all__ = ["Arm", "GridResult", "Hacker", "run_grid"]
