"""The one error type of the data path: bad files are reported, never silently used."""


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent; the message names the file (and line)."""
