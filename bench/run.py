"""Times nabla and the anchors (bench/anchors.py) in one session and prints the ratios.

    .venv/bin/python bench/run.py            # all workloads: the nine examples (WORKLOADS)
    .venv/bin/python bench/run.py mlp        # one
    .venv/bin/python bench/run.py mnist      # the four MNIST workloads
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

# name: (example, optimizer, batch, input C,H,W or None for the example's own, anchor
# workload, anchors that have it). The large nets are timed at 3×64×64 (their strides divide
# it), ResNet-34 also at its own 224×224.
WORKLOADS = {
    "linear": ("examples/mnist_linear.net", "sgd", 128, None, "linear", "torch,compile,jax"),
    "mlp": ("examples/mnist_mlp.net", "sgd", 128, None, "mlp", "torch,compile,jax"),
    "mlp-adam": ("examples/mnist_mlp.net", "adam", 128, None, "mlp", "torch,compile,jax"),
    "cnn": ("examples/mnist_cnn.net", "sgd", 128, None, "cnn", "torch"),
    "cifar_bn": ("examples/cifar_bn.net", "sgd", 128, None, "cifar_bn", "torch"),
    "resnet34": ("examples/resnet34.net", "sgd", 32, "3,64,64", "resnet34", "torch"),
    "resnet34-224": ("examples/resnet34.net", "sgd", 16, "3,224,224", "resnet34", "torch"),
    "mobilenet_v2": ("examples/mobilenet_v2.net", "sgd", 32, "3,64,64", "mobilenet_v2", "torch"),
    "efficientnet_b0": ("examples/efficientnet_b0.net", "sgd", 32, "3,64,64", "efficientnet_b0", "torch"),
    "convnext_tiny": ("examples/convnext_tiny.net", "sgd", 32, "3,64,64", "convnext_tiny", "torch"),
    "vit_tiny": ("examples/vit_tiny.net", "sgd", 32, "3,64,64", "vit_tiny", "torch"),
}
MNIST = ["linear", "mlp", "mlp-adam", "cnn"]


def json_lines(out):
    return [json.loads(l[5:]) for l in out.splitlines() if l.startswith("json ")]


def nabla_run(binary, file, opt, batch, shape, args):
    cmd = [binary, "bench", file, "--batch", str(batch), "--optimizer", opt, "--steps", str(args.steps)]
    if shape:
        cmd += ["--input", shape]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json_lines(out)[0]


def anchor_runs(workload, opt, batch, shape, only, args):
    cmd = [sys.executable, "bench/anchors.py", workload, "--optimizer", opt, "--batch", str(batch), "--steps", str(args.steps), "--only", only]
    if shape:
        cmd += ["--input", shape]
    p = subprocess.run(cmd, capture_output=True, text=True)
    runs = json_lines(p.stdout)
    if not runs:
        # An anchor that could not run (a framework missing from the venv) is said, not
        # silently left out of the table.
        why = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no output"])[-1]
        print(f"    {only}: no result ({why})", flush=True)
    return runs


def spread(xs):
    return f" (rounds: {', '.join(f'{x:.3f}' for x in xs)})" if len(xs) > 1 else ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workloads", nargs="*", default=list(WORKLOADS),
                   help=f"any of {', '.join(WORKLOADS)}, or 'mnist' for the first four (default: all)")
    p.add_argument("--batch", type=int, help="batch size (default: each workload's own, above)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--peak", type=float, default=185.0)
    p.add_argument("--nabla", default="target/release/nabla", help="the nabla binary to time")
    p.add_argument("--against", metavar="BINARY",
                   help="another nabla binary, timed in every round with --nabla (alternating which runs first)")
    p.add_argument("--anchors", default="torch,compile,jax",
                   help="comma-separated anchors to time (torch, compile, jax), or 'none'; each workload "
                        "runs those of them it has (the convolutional nets: PyTorch eager only)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate nabla and the anchors this many times and report medians of the rounds' medians "
                        "(on a noisy machine a single run of each can land in different phases)")
    args = p.parse_args()
    workloads = [x for w in args.workloads for x in (MNIST if w == "mnist" else [w])]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w}: expected one of {', '.join(WORKLOADS)} or mnist")
    for w in workloads:
        file, opt, batch, shape, anchor, has = WORKLOADS[w]
        batch = args.batch or batch
        runs, others, anchors = [], [], {}
        for r in range(args.rounds):
            # Alternate which build runs first, so that neither always meets the same phase.
            if args.against and r % 2 == 1:
                others.append(nabla_run(args.against, file, opt, batch, shape, args))
            runs.append(nabla_run(args.nabla, file, opt, batch, shape, args))
            if args.against and r % 2 == 0:
                others.append(nabla_run(args.against, file, opt, batch, shape, args))
            # One process per framework, so that each peak memory is its own.
            for only in [a for a in args.anchors.split(",") if a in has.split(",")]:
                for a in anchor_runs(anchor, opt, batch, shape, only, args):
                    anchors.setdefault(a["framework"], []).append(a)
        ms = [r["median_ms"] for r in runs]
        n = runs[0] | {"median_ms": statistics.median(ms)}
        gflops = statistics.median(r["gflops"] for r in runs)
        arena = n.get("arena_mib", 0.0)
        size = f", {shape.replace(',', '×')}" if shape else ""
        print(f"{w} (batch {batch}{size}, {opt}): nabla {n['median_ms']:.3f} ms{spread(ms)}, {gflops:.1f} GFLOP/s = {gflops / args.peak:.0%} of peak, "
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
