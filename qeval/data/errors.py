"""The one error type of ``qeval.data``."""


class DataError(ValueError):
    """Bad data input or a failed/corrupt download; the message is one line naming the file."""
