"""A model call on all cores while another process competes for them (issue #14, item 2).

For each OpenMP wait policy, a fresh process prepares the model (on a quiet machine), then
times calls on 1 thread and on all threads, interleaved, first alone and then beside a
busy-loop process (one per ``--neighbours``). The target: beside a neighbour, the all-threads
call is never worse than 1.2x the 1-thread call. Policies:

- ``fscnn``: fscnn's default (spin ~30000 times, then sleep, and the contention guard: calls
  on one thread while the calling thread is starved of CPU; see fscnn/_config.py)
- ``no-guard``: fscnn's spin without the guard (``FSCNN_ADAPTIVE_THREADS=0``)
- ``libgomp``: GNU OpenMP's own default (``GOMP_SPINCOUNT=300000``)
- ``passive``: ``OMP_WAIT_POLICY=passive`` (sleep at once)

    python bench/bench_contention.py                       # ResNet-18 at 90%, 224x224
    python bench/bench_contention.py --model vgg16 --iterations 10 --json out.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

POLICIES = {"fscnn": {}, "no-guard": {"FSCNN_ADAPTIVE_THREADS": "0"},
            "libgomp": {"GOMP_SPINCOUNT": "300000", "FSCNN_ADAPTIVE_THREADS": "0"},
            "passive": {"OMP_WAIT_POLICY": "passive", "FSCNN_ADAPTIVE_THREADS": "0"}}

_WORKER = r"""
import json, sys, time, numpy as np, fscnn
model_name, sparsity, size, iterations = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = fscnn.models.get_model(model_name)
if sparsity:
    fscnn.prune(model, sparsity, inplace=True)
    model.to_sparse()
x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
every = fscnn._config.usable_cpus()
model.prepare(input_shape=x.shape)
for t in (1, every, 1, every):  # kernels chosen and timed for each thread count, quietly
    fscnn.set_num_threads(t)
    model(x)
print(json.dumps({"ready": True, "wait": fscnn._config.config_dict()["openmp_wait"]}), flush=True)
for phase in ("alone", "neighbour"):
    sys.stdin.readline()
    times = {1: [], every: []}
    for _ in range(iterations):
        for t in times:
            fscnn.set_num_threads(t)
            t0 = time.perf_counter()
            model(x)
            times[t].append(time.perf_counter() - t0)
    print(json.dumps({"phase": phase, "times": {str(t): v for t, v in times.items()}}),
          flush=True)
"""


def _busy_loop():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(policy, model, sparsity, size, iterations, neighbours):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS",
                        "FSCNN_ADAPTIVE_THREADS")}
    env.update(POLICIES[policy])
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, model, str(sparsity), str(size),
                               str(iterations)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    ready = json.loads(worker.stdout.readline())
    result = {"policy": policy, "wait": ready["wait"]}
    busy = []
    try:
        for phase in ("alone", "neighbour"):
            if phase == "neighbour":
                busy = [_busy_loop() for _ in range(neighbours)]
                time.sleep(0.5)
            worker.stdin.write("go\n")
            worker.stdin.flush()
            report = json.loads(worker.stdout.readline())
            result[phase] = {t: _stats(v) for t, v in report["times"].items()}
    finally:
        for p in busy:
            p.kill()
        worker.kill()
    return result


def _stats(times):
    ms = sorted(1e3 * t for t in times)
    return {"median_ms": ms[len(ms) // 2], "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--neighbours", type=int, default=1, help="busy-loop processes")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    rows = [measure(p, args.model, args.sparsity, args.input_size, args.iterations,
                    args.neighbours) for p in args.policies]
    print(f"{args.model} at {args.sparsity:.0%}, {args.input_size}x{args.input_size}, batch 1; "
          f"median (p90) ms; {args.neighbours} busy-loop neighbour(s)")
    print(f"{'policy':8s} {'threads':>7s} {'alone':>16s} {'neighbour':>16s}  neighbour vs 1 "
          "thread alone")
    for row in rows:
        one = row["alone"]["1"]["median_ms"]
        for t in row["alone"]:
            a, n = row["alone"][t], row["neighbour"][t]
            print(f"{row['policy']:8s} {t:>7s} {a['median_ms']:7.1f} ({a['p90_ms']:6.1f}) "
                  f"{n['median_ms']:7.1f} ({n['p90_ms']:6.1f})  x{n['median_ms'] / one:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
