"""PyTorch on a CUDA GPU beside `nabla bench --device cuda`, in the same run: the train
steps of issue 21's table (MNIST MLP and CNN at batch 128, ResNet-34 and ViT-Tiny at batch
64 on 3x224x224), f32 and bf16, eager and torch.compile, with each step's time, achieved
TFLOP/s against the chip's peak, and the peak device memory.

Needs only the python3 of a machine with CUDA and PyTorch (torchvision for ResNet-34 and
ViT-Tiny; without it those rows say so). Never run by the tests.

    python3 bench/torch_gpu.py --nabla target/release/nabla --steps 50

For each workload and precision it runs, alternating which goes first each round:
`nabla bench FILE --device cuda --batch B [--input 3,224,224] --precision P --steps N`
(one process per run) and PyTorch's eager and compiled steps (in this process), and prints
one table row per contender with the median over rounds of the time per step. FLOPs per
step are nabla's count (multiply-adds times two, from `nabla bench`'s json line) for every
contender, so the TFLOP/s columns compare times, not counting conventions.

Peaks (dense, without sparsity): H200 SXM, TF32 tensor cores 494.7 TFLOP/s, BF16 989.4
TFLOP/s, FP32 (no tensor cores) 66.9 TFLOP/s; pass --peak-f32 / --peak-bf16 for another
chip.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

WORKLOADS = [
    # name, nabla example, batch, per-example input
    ("mnist_mlp", "examples/mnist_mlp.net", 128, (1, 28, 28)),
    ("mnist_cnn", "examples/mnist_cnn.net", 128, (1, 28, 28)),
    ("resnet34", "examples/resnet34.net", 64, (3, 224, 224)),
    ("vit_tiny", "examples/vit_tiny.net", 64, (3, 224, 224)),
]


def torch_model(name):
    import torch.nn as nn

    if name == "mnist_mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if name == "mnist_cnn":
        def block(cin, c):
            return [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10))
    import torchvision.models as tvm  # ImportError: the row says torchvision is missing
    if name == "resnet34":
        return tvm.resnet34(num_classes=10)
    if name == "vit_tiny":
        return tvm.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3,
                                     hidden_dim=192, mlp_dim=768, num_classes=10)
    raise SystemExit(f"unknown workload {name}")


def torch_step_ms(name, batch, shape, precision, compiled, steps):
    """Median ms per step of `steps` timed steps (after warm-up), and peak MiB."""
    import torch

    dev = torch.device("cuda")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = torch_model(name).to(dev)
    x = torch.randn(batch, *shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compile_s = None
    if compiled:
        step = torch.compile(step)
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    # The whole run queued, one wait at the end: as `nabla bench --device` times it.
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) / steps * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**20
    del model, opt
    torch.cuda.empty_cache()
    return ms, peak, compile_s


def nabla_run(binary, file, batch, shape, precision, steps):
    cmd = [binary, "bench", file, "--device", "cuda", "--batch", str(batch), "--precision", precision, "--steps", str(steps)]
    if shape[0] == 3:
        cmd += ["--input", ",".join(map(str, shape))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1:] or ["failed"]
    rows = [json.loads(l[5:]) for l in out.stdout.splitlines() if l.startswith("json ")]
    return rows[-1], None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nabla", default="target/release/nabla")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    p.add_argument("--precisions", default="f32,bf16")
    p.add_argument("--peak-f32", type=float, default=494.7, help="TF32 tensor-core peak, TFLOP/s")
    p.add_argument("--peak-bf16", type=float, default=989.4, help="BF16 tensor-core peak, TFLOP/s")
    args = p.parse_args()
    import torch

    print(f"# {torch.cuda.get_device_name(0)} · torch {torch.__version__} · {args.steps} steps per run, median of {args.rounds} rounds")
    print("| net | batch | precision | contender | ms/step | TFLOP/s | % of peak | peak MiB | nabla's speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    only = [w for w in args.only.split(",") if w]
    for name, file, batch, shape in WORKLOADS:
        if only and name not in only:
            continue
        for precision in args.precisions.split(","):
            peak = args.peak_bf16 if precision == "bf16" else args.peak_f32
            times = {"nabla": [], "pytorch eager": [], "torch.compile": []}
            mem, flops, notes = {}, None, []
            for r in range(args.rounds):
                order = ["nabla", "pytorch eager", "torch.compile"]
                if r % 2:
                    order.reverse()
                for who in order:
                    try:
                        if who == "nabla":
                            row, err = nabla_run(args.nabla, file, batch, shape, precision, args.steps)
                            if row is None:
                                notes.append(f"nabla: {err[0]}")
                                continue
                            times[who].append(row["ms_per_step"])
                            flops = row["flops"]
                            mem[who] = row.get("device_mib")
                        else:
                            ms, peak_mib, _ = torch_step_ms(name, batch, shape, precision, who == "torch.compile", args.steps)
                            times[who].append(ms)
                            mem[who] = peak_mib
                    except ImportError as e:
                        notes.append(f"{who}: {e}")
                    except Exception as e:  # a contender that fails is a row, not a crash
                        notes.append(f"{who}: {type(e).__name__}: {e}")
            base = statistics.median(times["nabla"]) if times["nabla"] else None
            for who, ts in times.items():
                if not ts:
                    continue
                ms = statistics.median(ts)
                tf = flops / (ms / 1e3) / 1e12 if flops else float("nan")
                speed = f"{ms / base:.2f}x" if base and who != "nabla" else ""
                m = mem.get(who)
                print(f"| {name} | {batch} | {precision} | {who} | {ms:.3f} | {tf:.1f} | {tf / peak:.1%} | {m if m is None else f'{m:.0f}'} | {speed} |")
            for n in sorted(set(notes)):
                print(f"| {name} | {batch} | {precision} | note | {n} | | | | |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
