"""The one exception type users see: its message is a single line naming the file or key at fault."""


class LesiondiffError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2, no traceback."""
