"""Exceptions raised by the layer graph."""


class StateDictError(ValueError, KeyError):
    """A state dict does not fit a module: every problem found, reported at once.

    Subclasses both ``ValueError`` and ``KeyError`` so that either ``except`` clause catches
    it. Nothing is loaded when it is raised.

    Attributes
    ----------
    missing_keys : list of str
        Keys the module expects that the mapping lacks.
    unexpected_keys : list of str
        Keys of the mapping the module does not have.
    mismatched : list of (str, tuple, tuple)
        ``(key, expected shape, received shape)`` for every array of the wrong shape.
    invalid : list of (str, str)
        ``(key, reason)`` for every value that is not a real numeric array.
    """

    def __init__(self, module_name, missing_keys=(), unexpected_keys=(), mismatched=(),
                 invalid=()):
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched = list(mismatched)
        self.invalid = list(invalid)
        lines = [f"Error(s) in loading state_dict for {module_name}:"]
        if self.missing_keys:
            lines.append(f"  missing keys ({len(self.missing_keys)}): "
                         + ", ".join(repr(k) for k in self.missing_keys))
        if self.unexpected_keys:
            lines.append(f"  unexpected keys ({len(self.unexpected_keys)}): "
                         + ", ".join(repr(k) for k in self.unexpected_keys))
        for key, expected, got in self.mismatched:
            lines.append(f"  shape mismatch for {key!r}: expected {tuple(expected)}, "
                         f"got {tuple(got)}")
        for key, reason in self.invalid:
            lines.append(f"  invalid value for {key!r}: {reason}")
        super().__init__("\n".join(lines))

    # KeyError's __str__ would print the repr of the message (quotes and "\n" escapes).
    __str__ = ValueError.__str__


class LayerInputError(ValueError):
    """An input does not fit the layer it is passed to (rank, channels, spatial size).

    The message starts with the layer's qualified name in the model being run and its type,
    e.g. ``"features.3 (Conv2d): expected 64 input channels, got 32"``.
    """
