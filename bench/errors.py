"""The one exception type the CLI turns into a single error line and a non-zero exit."""


class BenchError(Exception):
    """A user-facing error: bad input, a bad file or a bad flag.

    The message is one line that names the file, record or flag and says what is wrong;
    ``python -m bench`` prints it as ``error: <message>`` and exits with status 2.
    """
