"""The benchmark's error: bad options, a dataset copy that is incomplete or inconsistent."""

from __future__ import annotations

from ..errors import AftError


class BenchmarkError(AftError, ValueError):
    """A benchmark setting or dataset that cannot give the protocol's numbers (one line, no traceback)."""


class DatasetNotHere(BenchmarkError):
    """A Hub dataset with no local copy (under ``--data-root``, or in the Hub cache) while the Hub cannot be reached:
    kept apart so that a suite missing many copies is named in one short sentence, not one paragraph each."""

    def __init__(self, repo_id: str, missing_copy, why: str):
        self.repo_id, self.missing_copy, self.why = repo_id, missing_copy, why
        where = (f"no copy at '{missing_copy}'" if missing_copy is not None
                 else "no local copy (give one with --data-root DIR, as DIR/<repo name>)")
        super().__init__(f"dataset '{repo_id}': {where}, and {why}")


class BenchmarkStopped(AftError):
    """The run was stopped by a signal; every finished batch is saved, so the same command resumes it. The exit
    code is the shell's 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, out: str):
        import signal

        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: every finished batch is saved in '{out}'; run the "
                         "same command to resume")


__all__ = ["BenchmarkError", "BenchmarkStopped", "DatasetNotHere"]
