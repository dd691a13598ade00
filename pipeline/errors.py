"""User-facing errors: one line naming what is wrong and what was expected."""


class SemoreError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
