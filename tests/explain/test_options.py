"""Option checks collect every problem first and raise them as one error (one problem: its own message)."""

import pytest

from aft_hf.errors import AftError
from aft_hf.explain.options import OptionProblems


class _Refused(AftError):
    pass


def test_problems_are_collected_and_raised_together(tmp_path):
    checks = OptionProblems()
    checks.at_least("--batch-size", 0, 1)
    checks.at_least("--steps", None, 1)  # not given: no problem
    checks.each_at_least("--eps", [1.0, -2.0, 0.5], 0)
    checks.file("--reference", str(tmp_path / "missing.png"))

    def bad():
        raise AftError("unknown method 'foo'")

    assert checks.call(bad) is None and checks.call(lambda: 3) == 3
    with pytest.raises(_Refused) as info:
        checks.raise_if_any(_Refused)
    message = str(info.value)
    assert message.startswith("4 problems with the options: ")
    assert "--batch-size must be >= 1, got 0" in message and "--eps values must be >= 0, got -2" in message
    assert "missing.png' is not a file" in message and "unknown method 'foo'" in message


def test_one_problem_is_its_own_message_and_none_raises_nothing():
    checks = OptionProblems()
    checks.raise_if_any(_Refused)
    checks.require(False, "--top-k must be positive")
    with pytest.raises(_Refused, match="^--top-k must be positive$"):
        checks.raise_if_any(_Refused)
