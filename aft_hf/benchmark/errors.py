"""The benchmark's error: bad options, a dataset copy that is incomplete or inconsistent."""

from __future__ import annotations

from ..errors import AftError


class BenchmarkError(AftError, ValueError):
    """A benchmark setting or dataset that cannot give the protocol's numbers (one line, no traceback)."""


class BenchmarkStopped(AftError):
    """The run was stopped by a signal; every finished batch is saved, so the same command resumes it. The exit
    code is the shell's 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, out: str):
        import signal

        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: every finished batch is saved in '{out}'; run the "
                         "same command to resume")


__all__ = ["BenchmarkError", "BenchmarkStopped"]
