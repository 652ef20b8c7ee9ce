"""Scale-out benchmark of ``fscnn.dask.predict``: images/s on 1 and 2 single-threaded
``LocalCluster`` workers and on one 2-thread worker, and its overhead against a plain loop in
one process at equal total kernel threads.

The model (a zoo model with random weights, magnitude-pruned, held sparse) is prepared once
in this process at one thread for the chunk shape, so the pickle each worker receives carries
its kernel choices and no worker times kernels. Images are generated and persisted on the
workers (``dask.array.random``) before timing, so no input crosses the network and the
cluster rows time inference only. The configurations are timed in ``--rounds`` rounds, their
order rotating from round to round; in each, a configuration is set up (a cluster started),
computes once to warm up (ship the model, build plans), is timed ``--repeats`` times and is
torn down before the next one starts: a slow spell of the shared machine then falls on every
configuration alike (identical back-to-back runs on the 2-core VM differed by x1.5), and no
idle cluster runs beside a timed one (an idle 1-thread worker takes 2-4% of a core, its
scheduler and client more). Ratios are given of the medians and of the best runs.

Targets of issue #16 on a 2-core machine: 2 workers >= 1.7x the images/s of 1 worker for
ResNet-18 at 90% on 224x224; ``fscnn.dask.predict`` on the threaded scheduler within 10% of a
plain loop at the same total threads.

    python bench/bench_dask.py                          # ResNet-18, 90%, 224x224, 64 images
    python bench/bench_dask.py --model vgg16 --images 32 --json dask.json

Needs ``pip install "fscnn[dask]"``.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np


def _rounds(configs, rounds, repeats):
    """Seconds per call of each configuration over all rounds (see the module docstring);
    ``configs`` maps a name to a context manager factory that yields the call to time."""
    names = list(configs)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with configs[name]() as fn:
                fn()  # warm-up: ships the model, builds plans
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    return times


def _row(name, n, times, threads):
    med = statistics.median(times)
    return {"config": name, "threads_total": threads, "median_s": med, "min_s": min(times),
            "max_s": max(times), "images_per_s": n / med, "images_per_s_best": n / min(times)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per round")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import fscnn
    import fscnn.dask
    from fscnn._config import threads

    fscnn.nn.manual_seed(0)
    model = fscnn.models.get_model(args.model).eval()
    fscnn.prune(model, args.sparsity, inplace=True)
    model.to_sparse()
    size, n, b = args.input_size, args.images, args.batch_size
    chunk = (b, 3, size, size)
    with threads(1):  # the kernel choices the single-threaded workers will reuse
        model.prepare(chunk)
    x_np = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
    configs = {}  # name -> (setup, kernel threads in all)

    def plain(t):
        @contextlib.contextmanager
        def setup():
            def run():
                with threads(t):
                    for i in range(0, n, b):
                        model(x_np[i:i + b])
            yield run
        return setup

    def threaded(t):
        @contextlib.contextmanager
        def setup():
            with dask.config.set(scheduler="threads", num_workers=t), threads(t):
                y = fscnn.dask.predict(model, da.from_array(x_np, chunks=(b, -1, -1, -1)))
                yield y.compute
        return setup

    def cluster(workers, per_worker, profiler):
        @contextlib.contextmanager
        def setup():
            with dask.config.set({"distributed.worker.profile.enabled": profiler}), \
                    LocalCluster(n_workers=workers, threads_per_worker=per_worker,
                                 processes=True, dashboard_address=None) as cluster, \
                    Client(cluster):
                x = da.random.default_rng(0).random((n, 3, size, size), chunks=(b, -1, -1, -1),
                                                    dtype=np.float32).persist()
                wait(x)  # generated and held on the workers: the timings are inference only
                yield fscnn.dask.predict(model, x).compute
        return setup

    for t in (1, 2):
        configs[f"plain loop, {t} thread(s)"] = plain(t), t
        configs[f"fscnn.dask.predict, threaded scheduler, {t} worker thread(s)"] = threaded(t), t
    # one process per core, and one process holding every core (its tasks share one copy of
    # the model in the caches); with Dask's defaults, and with the workers' statistical
    # profiler off (it samples the task threads' stacks every 10 ms holding the GIL, which
    # each layer of the model waits for on its way back from its kernel)
    for workers, per_worker, profiler in ((1, 1, True), (2, 1, True), (1, 2, True),
                                          (1, 1, False), (2, 1, False)):
        name = (f"LocalCluster, {workers} worker(s) x {per_worker} thread(s)"
                + ("" if profiler else ", profiler off"))
        configs[name] = cluster(workers, per_worker, profiler), workers * per_worker
    times = _rounds({name: setup for name, (setup, _) in configs.items()}, args.rounds,
                    args.repeats)
    rows = [_row(name, n, times[name], t) for name, (_, t) in configs.items()]

    by = {r["config"]: r for r in rows}
    pairs = {
        "2 workers / 1 worker (target >= 1.7)":
            ("LocalCluster, 2 worker(s) x 1 thread(s)", "LocalCluster, 1 worker(s) x 1 thread(s)"),
        "1 worker x 2 threads / 1 worker x 1 thread":
            ("LocalCluster, 1 worker(s) x 2 thread(s)", "LocalCluster, 1 worker(s) x 1 thread(s)"),
        "LocalCluster 1 worker x 1 thread / plain loop at 1 thread":
            ("LocalCluster, 1 worker(s) x 1 thread(s)", "plain loop, 1 thread(s)"),
        "profiler off: 2 workers / 1 worker (target >= 1.7)":
            ("LocalCluster, 2 worker(s) x 1 thread(s), profiler off",
             "LocalCluster, 1 worker(s) x 1 thread(s), profiler off"),
        "profiler off: LocalCluster 1 worker x 1 thread / plain loop at 1 thread":
            ("LocalCluster, 1 worker(s) x 1 thread(s), profiler off", "plain loop, 1 thread(s)"),
    }
    for t in (1, 2):
        pairs[f"dask threaded / plain loop at {t} thread(s) (target >= 0.9)"] = (
            f"fscnn.dask.predict, threaded scheduler, {t} worker thread(s)",
            f"plain loop, {t} thread(s)")
    ratios = {k: by[a]["images_per_s"] / by[b]["images_per_s"] for k, (a, b) in pairs.items()}
    ratios_best = {k: by[a]["images_per_s_best"] / by[b]["images_per_s_best"]
                   for k, (a, b) in pairs.items()}
    print(f"{args.model} at {args.sparsity:.0%}, {n} images {size}x{size}, chunks of {b}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    width = max(len(r["config"]) for r in rows)
    print(f"{'configuration':<{width}}  threads  images/s  median s (min-max)")
    for r in rows:
        print(f"{r['config']:<{width}}  {r['threads_total']:>7}  {r['images_per_s']:>8.1f}  "
              f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})")
    print("ratios of the medians (of the best runs):")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f} ({ratios_best[name]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "ratios": ratios,
                       "ratios_best": ratios_best,
                       "load_average": os.getloadavg()[0]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
