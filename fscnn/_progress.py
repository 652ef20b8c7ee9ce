"""Progress of long operations on stderr: preparing a model (one step per layer) and timing
benchmark rounds.

:class:`Progress` counts steps and shows them only once the work has run for ``delay``
seconds (default :data:`DELAY`), so quick calls print nothing: tqdm's bar when tqdm is
installed, else a one-line counter rewritten in place. By default it shows only when stderr
is a terminal (never in logs, pipes or test runs); ``enabled=True`` or ``False`` decides
instead.
"""
import sys
import time

__all__ = ["Progress", "DELAY"]

DELAY = 1.0
"""Seconds of work before a :class:`Progress` appears."""


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """A step counter shown on stderr for work that takes longer than ``delay`` seconds.

    Parameters
    ----------
    total : int or None
        Steps expected (None: unknown).
    desc, unit : str
        What is progressing and what a step is, e.g. ``"prepare"`` and ``"layer"``.
    enabled : bool or None
        Show it: None when stderr is a terminal.
    delay : float, optional
        Seconds after which it appears (default :data:`DELAY`).
    rate : bool
        The counter shown without tqdm also shows steps per second (tqdm's bar always does).

    Examples
    --------
    >>> with Progress(len(layers), "prepare", "layer") as progress:
    ...     for layer in layers:
    ...         work(layer)
    ...         progress.update()
    """

    def __init__(self, total, desc, unit, enabled=None, delay=None, rate=False):
        if enabled not in (None, True, False):
            raise TypeError(f"progress must be None, True or False, got {enabled!r}")
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.enabled = _is_terminal(sys.stderr) if enabled is None else enabled
        self.delay = DELAY if delay is None else delay
        self.start = time.perf_counter()
        self.rate = rate
        self.display = None

    def update(self, n=1):
        """Count ``n`` more steps done."""
        self.n += n
        if self.display is not None:
            self.display.update(n)
        elif self.enabled and time.perf_counter() - self.start >= self.delay:
            self.display = _display(self.total, self.desc, self.unit, self.n, self.rate)

    def close(self):
        """Remove what was shown."""
        if self.display is not None:
            self.display.close()
            self.display = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _display(total, desc, unit, done, rate):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, desc, unit, done, rate)
    return tqdm(total=total, initial=done, desc=desc, unit=unit, leave=False, file=sys.stderr)


class _Counter:
    """tqdm's stand-in: ``desc: unit i/N`` rewritten in place on stderr, with ``rate``
    followed by ``(r unit/s)`` since the counter appeared."""

    def __init__(self, total, desc, unit, done, rate=False):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.start, self.first, self.rate = time.perf_counter(), done, rate
        self.update(done)

    def update(self, n=1):
        self.n += n
        of = f"/{self.total}" if self.total else ""
        elapsed = time.perf_counter() - self.start
        rate = (f" ({(self.n - self.first) / elapsed:.1f} {self.unit}/s)"
                if self.rate and elapsed > 0 else "")
        print(f"\r{self.desc}: {self.unit} {self.n}{of}{rate}", end="", file=sys.stderr,
              flush=True)

    def close(self):
        print("\r" + " " * (2 * len(self.unit) + len(self.desc) + 50) + "\r", end="",
              file=sys.stderr, flush=True)
