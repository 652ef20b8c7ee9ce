"""Exceptions raised by the layer graph."""


class StateDictError(ValueError, KeyError):
    """A state dict does not fit a module: every problem found, reported at once.

    The message summarises: the number of missing and unexpected keys with the first few of
    each, the first few shape mismatches and invalid values, and a hint when the cause is
    recognisable (a ``module.`` prefix, an fscnn archive's encoded keys, another
    architecture's weights). The attributes list everything.

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
                 invalid=(), matched=None):
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched = list(mismatched)
        self.invalid = list(invalid)
        lines = [f"Error(s) in loading state_dict for {module_name}:"]
        if self.missing_keys:
            lines.append(f"  missing keys ({len(self.missing_keys)}): "
                         + _some(repr(k) for k in self.missing_keys))
        if self.unexpected_keys:
            lines.append(f"  unexpected keys ({len(self.unexpected_keys)}): "
                         + _some(repr(k) for k in self.unexpected_keys))
        problems = [f"shape mismatch for {key!r}: expected {tuple(expected)}, got {tuple(got)}"
                    for key, expected, got in self.mismatched]
        problems += [f"invalid value for {key!r}: {reason}" for key, reason in self.invalid]
        lines += [f"  {problem}" for problem in problems[:_SHOWN]]
        if len(problems) > _SHOWN:
            lines.append(f"  ... and {len(problems) - _SHOWN} more shape mismatches or invalid "
                         "values (all of them in the mismatched and invalid attributes)")
        hint = self._hint(matched)
        if hint:
            lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))

    def _hint(self, matched):
        """A likely cause of the missing and unexpected keys, or None. ``matched``: how many
        keys of the mapping are keys of the module (None: unknown)."""
        unexpected = self.unexpected_keys
        if any(_ARCHIVE_SEP in key or key.startswith("__fscnn") for key in unexpected):
            return ("keys such as 'NAME::values' are the encoded members of an fscnn archive: "
                    "read the file with fscnn.load(path)")
        prefix = _common_prefix(unexpected)
        missing = set(self.missing_keys)
        if prefix and any(key[len(prefix):] in missing for key in unexpected):
            wrapped = (" (the checkpoint of a DataParallel or otherwise wrapped model?)"
                       if prefix == "module." else "")
            return (f"every unexpected key starts with {prefix!r}{wrapped}: strip it, e.g. "
                    f"{{k.removeprefix({prefix!r}): v for k, v in state.items()}}")
        if matched == 0 and missing and unexpected:
            return "no key of the mapping is one of the model's: weights of another architecture?"
        return None

    # KeyError's __str__ would print the repr of the message (quotes and "\n" escapes).
    __str__ = ValueError.__str__


_SHOWN = 5  # keys and problems listed before "... and N more"
_ARCHIVE_SEP = "::"  # how fscnn.io names an archive's encoded members


def _some(items):
    """The first few of ``items`` joined by commas, then how many were left out."""
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _common_prefix(keys):
    """The first dotted component, with its dot, that every one of ``keys`` starts with."""
    if not keys:
        return None
    first = keys[0].split(".", 1)[0] + "."
    return first if all(k.startswith(first) and len(k) > len(first) for k in keys) else None


class LayerInputError(ValueError):
    """An input does not fit the layer it is passed to (rank, channels, spatial size).

    The message starts with the layer's qualified name in the model being run and its type,
    e.g. ``"features.3 (Conv2d): expected 64 input channels, got 32"``.
    """


class ModelPickleError(ValueError):
    """A pickled module was written by another fscnn version (or is not one fscnn wrote).

    Pickles move a model between processes of one installation (multiprocessing, Dask
    workers); ``fscnn.save`` archives move it between versions.
    """
