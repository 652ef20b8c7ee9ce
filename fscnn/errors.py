"""Exceptions shared by the library and the command line.

:class:`CommandError` lives here, not in :mod:`fscnn.cli`, so that the modules that raise it
(:mod:`fscnn.bench`) never import the command line: the library sits below the CLI.
"""
import contextlib

__all__ = ["CommandError", "as_command_error"]


class CommandError(ValueError):
    """A user mistake in a command's arguments (an unknown model, a missing ``--model``, an
    archive that does not fit the model).

    ``fscnn ...`` prints it as one line, ``fscnn: error: ...``, and exits with status 2; it
    prints every other exception with its traceback, as the internal error it is.
    """


@contextlib.contextmanager
def as_command_error(*types, context=None):
    """Re-raise the exceptions of ``types`` raised in the block as :class:`CommandError`.

    For the library calls that check what the user gave (an archive, a keep list, an input
    size): their errors are the user's mistakes, while the same exception types raised
    anywhere else stay internal errors.

    Parameters
    ----------
    *types : exception classes
    context : str, optional
        Prefixed to the message, e.g. the file or option at fault.
    """
    try:
        yield
    except types as exc:
        raise CommandError(f"{context}: {exc}" if context else str(exc)) from exc
