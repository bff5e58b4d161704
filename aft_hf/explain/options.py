"""Checks of command-line options before anything is loaded, reported together in one message.

A model or data set can take minutes to load; a bad ``--batch-size`` found after that wastes them,
and fixing problems one run at a time wastes more. The CLIs collect every problem first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import AftError
from ..outputs import check_output_folder


class OptionProblems:
    """Collects option problems; :meth:`raise_if_any` raises them as one error."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def require(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def at_least(self, option: str, value: Optional[float], minimum: float, meaning: str = "") -> None:
        """``value`` (None = not given) must be >= ``minimum``."""
        if value is not None and value < minimum:
            self.problems.append(f"{option} must be >= {minimum:g}{meaning}, got {value:g}")

    def each_at_least(self, option: str, values: Optional[Iterable[float]], minimum: float) -> None:
        bad = [v for v in values or () if v < minimum]
        self.require(not bad, f"{option} values must be >= {minimum:g}, got {', '.join(f'{v:g}' for v in bad)}")

    def file(self, option: str, path: Optional[str]) -> None:
        if path is not None:
            self.require(Path(path).is_file(), f"{option} '{path}' is not a file")

    def output_folder(self, option: str, path: Optional[str]) -> None:
        """``path`` must be a folder or a name that can become one: not a file, nor inside one (found before the
        work, not when its results are written), nor a model's folder."""
        if path is not None:
            self.call(lambda: check_output_folder(option, path, results=True))

    def extend(self, problems: Iterable[str], prefix: str = "") -> None:
        """Add problems found by another check (each after ``prefix``, e.g. ``"--eps: "``)."""
        self.problems += [prefix + problem for problem in problems]

    def call(self, check: Callable[[], object]) -> object:
        """Run a check that raises an :class:`AftError`; keep its message as a problem."""
        try:
            return check()
        except AftError as e:
            self.problems.append(str(e))
            return None

    def raise_if_any(self, error: type[AftError]) -> None:
        if len(self.problems) == 1:
            raise error(self.problems[0])
        if self.problems:
            raise error(f"{len(self.problems)} problems with the options: " + "; ".join(self.problems))


__all__ = ["OptionProblems", "check_output_folder"]
