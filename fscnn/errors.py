"""Exceptions shared by the library and the command line.

:class:`CommandError` lives here, not in :mod:`fscnn.cli`, so that the modules that raise it
(:mod:`fscnn.bench`) never import the command line: the library sits below the CLI.
"""

__all__ = ["CommandError"]


class CommandError(ValueError):
    """A user mistake in a command's arguments (an unknown model, a missing ``--model``, an
    archive that does not fit the model).

    ``fscnn ...`` prints it as one line, ``fscnn: error: ...``, and exits with status 2; it
    prints every other exception with its traceback, as the internal error it is.
    """
