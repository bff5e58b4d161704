"""One error base for the whole package.

Every error that means *bad input from the user* (a config value, a file, a folder, a data set, a
repo id, an option) derives from :class:`AftError`. The command line prints such an error as one
line and exits with code 2, without a traceback; anything else is a bug and keeps its traceback.

Each area has its own subclass (defined next to the code that raises it), which also derives from
the builtin exception it replaced (``ValueError`` or ``RuntimeError``), so ``except ValueError``
written against earlier versions keeps working.
"""

from __future__ import annotations


class AftError(Exception):
    """Bad input or an unusable environment, explained in one line for the user."""

    exit_code: int = 2


class InputError(AftError, ValueError):
    """A tensor or argument passed to a library function has the wrong type, shape, dtype or range.

    Raised at the public entry point, naming the argument and the expected form, instead of a
    shape error from deep inside torch or transformers.
    """


__all__ = ["AftError", "InputError"]
