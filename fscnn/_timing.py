"""Timing of candidate calls, in turns: how ``kernel='auto'`` and fscnn's other run-time
choices (the threads of a layer, of an elementwise pass) compare their candidates. Plain
Python and NumPy, so that any module can use it without importing the kernels."""
import time

import numpy as np


def round_robin_times(fns, repeats=3, budget=2e-3, limit=25):
    """Seconds of every timed call of each function of ``fns`` (a list per function): after
    one untimed call each, rounds that call each once, at least ``repeats`` rounds and more,
    up to ``limit``, until the rounds took ``budget`` seconds together.

    Round-robin, so that a burst of load on a busy machine slows every candidate alike, and
    short calls repeated more often: with a fixed three calls, MobileNetV2's sparse classifier
    (~0.1 ms) lost to the dense one at 5x its time in some runs."""
    for fn in fns:
        fn()  # warm-up (page faults, caches)
    times = [[] for _ in fns]
    start, rounds = time.perf_counter(), 0
    while rounds < repeats or (rounds < limit and time.perf_counter() - start < budget):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t0)
        rounds += 1
    return times


def fastest_calls(fns, repeats=3, budget=2e-3, limit=25):
    """The fastest call of each function of ``fns``, in seconds (see
    :func:`round_robin_times`): what a kernel costs when nothing disturbs it."""
    return [min(spent) for spent in round_robin_times(fns, repeats, budget, limit)]


def typical_calls(fns, repeats=5, budget=2e-3, limit=25):
    """The median call of each function of ``fns``, in seconds (see
    :func:`round_robin_times`): for choices whose cost comes in random delays rather than
    steady work, such as waking a sleeping thread (a minimum finds the calls that had none)."""
    return [float(np.median(spent)) for spent in round_robin_times(fns, repeats, budget, limit)]


def time_call(fn, repeats=3):
    """The fastest call of ``fn`` in seconds (see :func:`fastest_calls`)."""
    return fastest_calls((fn,), repeats)[0]
