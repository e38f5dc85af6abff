"""Input errors that name the file, the place in it and the problem, collected over a whole input."""
from __future__ import annotations

from dataclasses import dataclass

_SHOWN = 50


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file: where it is and what is wrong."""

    source: str
    where: str | None
    message: str

    def __str__(self) -> str:
        place = f"{self.source}, {self.where}" if self.where else self.source
        return f"{place}: {self.message}"


class DataError(ValueError):
    """Raised with every problem found in an input, not just the first one."""

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the input:"]
        lines += [f"  - {p}" for p in self.problems[:_SHOWN]]
        if len(self.problems) > _SHOWN:
            lines.append(f"  ... and {len(self.problems) - _SHOWN} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class ResumeMismatch(ValueError):
    """A checkpoint or finished result exists but was made for other data or with other settings."""


class ProtectionError(ValueError):
    """A saved protection that cannot be used: missing or truncated file, malformed JSON, noise beyond ε, other rows."""


class OutputError(RuntimeError):
    """An output could not be written (a full disk, no permission); whatever was there before is unchanged."""


class UsageError(ValueError):
    """Command-line flags that do not fit together (e.g. two training sources)."""


class DefenceError(ValueError):
    """A defence that cannot be applied as asked, in one line: an unknown name, a missing input, a clean CSV of other rows."""
