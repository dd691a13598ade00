"""User-facing errors: one line naming what is wrong and what was expected."""


class SemoreError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
