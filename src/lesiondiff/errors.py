"""The one exception type users see: its message is a single line naming the file or key at fault."""


class LesiondiffError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2, no traceback."""


class ReportedByMain(LesiondiffError):
    """The refusal of the main process of an ``accelerate launch`` (rank 0), met by another process of the launch:
    it exits with status 2 too, and prints nothing, so that the user reads the one ``error:`` line once."""
