"""The one error type a conversion raises: the CLI prints it and exits 2."""


class ConversionError(Exception):
    """A model could not be converted; the message says why and how to fix it."""
