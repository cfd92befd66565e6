"""Times nabla and the anchors (bench/anchors.py) in one session and prints the ratios.

    .venv/bin/python bench/run.py            # all workloads
    .venv/bin/python bench/run.py mlp        # one
    .venv/bin/python bench/run.py --rounds 3 # alternating three times, medians of rounds

nabla is run as `target/release/nabla bench` (build it first: cargo build --release), or as
the binary given with --nabla. To compare two builds (say, before and after a change):

    python3 bench/run.py linear mlp --rounds 3 --anchors none --against /tmp/old/nabla

times the other binary in every round too, alternating which goes first, and prints both
medians and their ratio.
A ratio above 1 means nabla is faster. Peak: the machine's measured SGEMM peak, given
with --peak (GFLOP/s; 185 on the 2-core AVX2 machine of docs/performance.md).
"""
import argparse
import json
import statistics
import subprocess
import sys

WORKLOADS = {
    "linear": ("examples/mnist_linear.net", "sgd"),
    "mlp": ("examples/mnist_mlp.net", "sgd"),
    "mlp-adam": ("examples/mnist_mlp.net", "adam"),
    "cnn": ("examples/mnist_cnn.net", "sgd"),
}


def json_lines(out):
    return [json.loads(l[5:]) for l in out.splitlines() if l.startswith("json ")]


def nabla_run(binary, file, opt, args):
    out = subprocess.run([binary, "bench", file, "--batch", str(args.batch), "--optimizer", opt, "--steps", str(args.steps)],
                         capture_output=True, text=True, check=True).stdout
    return json_lines(out)[0]


def anchor_runs(w, opt, only, args):
    out = subprocess.run([sys.executable, "bench/anchors.py", w.split("-")[0], "--optimizer", opt, "--batch", str(args.batch), "--steps", str(args.steps), "--only", only],
                         capture_output=True, text=True).stdout
    return json_lines(out)


def spread(xs):
    return f" (rounds: {', '.join(f'{x:.3f}' for x in xs)})" if len(xs) > 1 else ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--peak", type=float, default=185.0)
    p.add_argument("--nabla", default="target/release/nabla", help="the nabla binary to time")
    p.add_argument("--against", metavar="BINARY",
                   help="another nabla binary, timed in every round with --nabla (alternating which runs first)")
    p.add_argument("--anchors", default="torch,compile,jax",
                   help="comma-separated anchors to time (torch, compile, jax), or 'none'")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate nabla and the anchors this many times and report medians of the rounds' medians "
                        "(on a noisy machine a single run of each can land in different phases)")
    args = p.parse_args()
    for w in args.workloads:
        file, opt = WORKLOADS[w]
        runs, others, anchors = [], [], {}
        for r in range(args.rounds):
            # Alternate which build runs first, so that neither always meets the same phase.
            if args.against and r % 2 == 1:
                others.append(nabla_run(args.against, file, opt, args))
            runs.append(nabla_run(args.nabla, file, opt, args))
            if args.against and r % 2 == 0:
                others.append(nabla_run(args.against, file, opt, args))
            # One process per framework, so that each peak memory is its own.
            for only in [a for a in args.anchors.split(",") if a and a != "none"]:
                for a in anchor_runs(w, opt, only, args):
                    anchors.setdefault(a["framework"], []).append(a)
        ms = [r["median_ms"] for r in runs]
        n = runs[0] | {"median_ms": statistics.median(ms)}
        gflops = statistics.median(r["gflops"] for r in runs)
        arena = n.get("arena_mib", 0.0)
        print(f"{w} (batch {args.batch}, {opt}): nabla {n['median_ms']:.3f} ms{spread(ms)}, {gflops:.1f} GFLOP/s = {gflops / args.peak:.0%} of peak, "
              f"compile {n['compile_ms']:.1f} ms, process peak {n['peak_mib']:.0f} MiB (arena {arena:.0f} MiB)")
        if others:
            o_ms = [o["median_ms"] for o in others]
            median = statistics.median(o_ms)
            print(f"    {'against':<14} {median:.3f} ms{spread(o_ms)}   {args.nabla} takes {n['median_ms'] / median:.3f}x the time of {args.against}")
        for framework, rs in anchors.items():
            a_ms = [a["median_ms"] for a in rs]
            a = rs[0]
            median = statistics.median(a_ms)
            mem = f"process peak {a['peak_mib']:.0f} MiB ({a['growth_mib']:.0f} MiB over the imported framework)" if a.get("peak_mib") else ""
            print(f"    {framework:<14} {median:.3f} ms{spread(a_ms)}   nabla is {median / n['median_ms']:.2f}x faster   {mem}")


if __name__ == "__main__":
    main()
