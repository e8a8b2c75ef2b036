"""The one exception type users see.

Every mistake a user can make (a bad file, an unknown target, a corrupt model) raises
:class:`HermesError` with a one-line message that names the problem and says what to do.
The CLI prints it as ``error: <message>`` and exits with status 2; the Slicer module shows it
in a message box. Anything else that escapes is a bug and keeps its traceback.
"""


class HermesError(Exception):
    """A user-facing error whose message is one line: what is wrong and what to do."""


class CancelledError(HermesError):
    """The user cancelled the run; nothing was written."""

    def __init__(self, message: str = "cancelled by the user; no output was written") -> None:
        super().__init__(message)
