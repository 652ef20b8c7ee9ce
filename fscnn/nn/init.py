"""Default weight initialisation of fresh layers, from one seedable NumPy Generator.

Fresh layers follow torch's default scheme in distribution (not in the random stream):
convolution and linear weights and biases are uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``
(torch's ``kaiming_uniform_(a=sqrt(5))``), batch norm starts as the identity. Models run
without a checkpoint this way; real use loads trained weights.
"""
import contextlib
import threading

import numpy as np

_state = {"rng": np.random.default_rng()}
_local = threading.local()


def manual_seed(seed):
    """Seed the generator that initialises fresh layers, for reproducible models.

    Parameters
    ----------
    seed : int or None
        Anything :func:`numpy.random.default_rng` accepts; ``None`` draws fresh entropy.

    Examples
    --------
    >>> fscnn.nn.manual_seed(0)
    >>> a = fscnn.nn.Linear(4, 2).weight
    >>> fscnn.nn.manual_seed(0)
    >>> bool((fscnn.nn.Linear(4, 2).weight == a).all())
    True
    """
    _state["rng"] = np.random.default_rng(seed)


@contextlib.contextmanager
def uninitialized():
    """Within the block, fresh layers get uninitialised weight arrays (on this thread).

    For builders that assign every weight right after constructing a layer (model import,
    whole-model archives): drawing random weights for a 100-million-weight layer only to
    overwrite them costs a second and touches all its memory."""
    previous = getattr(_local, "skip", False)
    _local.skip = True
    try:
        yield
    finally:
        _local.skip = previous


def uniform_fan_in(shape, fan_in):
    """Float32 array of ``shape``, uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``."""
    if getattr(_local, "skip", False):
        return np.empty(shape, np.float32)
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    out = _state["rng"].random(shape, dtype=np.float32)
    out *= np.float32(2.0 * bound)
    out -= np.float32(bound)
    return out
