"""Trains the nine example nets on real data, each with the recipe its example declares,
in nabla and (with --torch) in PyTorch on the same data, and prints one row per net:
parameters, ms per step, seconds per epoch, loss at the first and last epoch, test
accuracy.

Data: the three MNIST nets train on the bundled MNIST subset (as their examples do);
`cifar_bn` on Fashion-MNIST as 3×32×32 and the five large nets on Fashion-MNIST as
3×64×64 (gray to RGB, then resized: `transform(fashion_mnist(), [to_rgb(), resize(n)])`).
Fashion-MNIST comes from --data (a directory holding fashion-mnist/ with its four IDX
files). A fixed budget: the first --train training examples (5,000; --cifar-train, 30,000,
for cifar_bn), --epochs epochs (4), the whole 10,000-image test split at the end. On the
2-core development machine the nine take about 30 minutes in nabla and 63 with their
PyTorch twins (docs/performance.md).

The recipe is read from each example's `TrainConfig`: optimizer, schedule, label
smoothing, augmentation, normalization and batch as declared; the epochs become the
budget's, a declared warmup becomes one epoch, and random-crop padding scales with the
image (16 pixels at 224 are 5 at 64). PyTorch runs the same recipe: torchvision's
classes for the five standard nets (bench/torch_nets.py), the same transforms
(antialiased bilinear resize, zero-padded random crop, flip, then normalization), the
same per-step learning rate as std.train's `learning_rate`, its own seeded shuffle, and
the same initial weights (nabla's, saved before training and loaded strictly).

    .venv/bin/python bench/zoo.py --data ../data --torch
    .venv/bin/python bench/zoo.py --data ../data --nets vit_tiny --train 2000 --epochs 2
"""

import argparse
import gzip
import math
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NETS = ["mnist_linear", "mnist_mlp", "mnist_cnn", "cifar_bn", "resnet34", "mobilenet_v2",
        "efficientnet_b0", "convnext_tiny", "vit_tiny"]
# The image size each net trains at here (None: the bundled MNIST as it is).
SIZE = {"cifar_bn": 32, "resnet34": 64, "mobilenet_v2": 64, "efficientnet_b0": 64,
        "convnext_tiny": 64, "vit_tiny": 64}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


# ---------------------------------------------------------------- the examples' recipes

def split_top(s, sep=","):
    """`s` split at `sep` outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return [x.strip() for x in out if x.strip()]


def call(s):
    """`name(k: v, ...)` as (name, {k: v}); positional arguments get their index."""
    m = re.fullmatch(r"(\w+)\((.*)\)", s.strip(), re.S)
    if not m:
        raise ValueError(f"not a call: {s}")
    args = {}
    for i, a in enumerate(split_top(m.group(2))):
        if ":" in a:
            k, v = a.split(":", 1)
            args[k.strip()] = v.strip()
        else:
            args[i] = a
    return m.group(1), args


def example(name):
    """(source up to its script, net name, TrainConfig fields as text) of an example."""
    src = open(os.path.join(ROOT, "examples", f"{name}.net")).read()
    head = src[: src.index("\nlet data")]
    net = re.search(r"^net (\w+)", src, re.M).group(1)
    body = re.search(r"let cfg = TrainConfig \{(.*?)\}\n", src, re.S).group(1)
    fields = {}
    for f in split_top(body):
        k, v = f.split(":", 1)
        fields[k.strip()] = v.strip()
    return head, net, fields


def recipe(name, epochs):
    """The example's TrainConfig fields with the budget's epochs, warmup and crop."""
    _, _, f = example(name)
    f = dict(f)
    f["epochs"] = str(epochs)
    if int(f.get("warmup_epochs", "0")) > 0:
        f["warmup_epochs"] = "1"
    if "augment" in f and SIZE.get(name):
        def scale(m):
            return f"random_crop(pad: {max(1, round(int(m.group(1)) * SIZE[name] / 224))})"
        if SIZE[name] == 64:
            f["augment"] = re.sub(r"random_crop\(pad: (\d+)\)", scale, f["augment"])
    f["eval_every"] = "0"
    return f


def floats(v):
    v = v.strip()
    if v == "imagenet_mean()":
        return IMAGENET[0]
    if v == "imagenet_std()":
        return IMAGENET[1]
    return [float(x) for x in v.strip("[]").split(",") if x.strip()]


# ---------------------------------------------------------------- nabla

def nabla_program(name, train, epochs, init="init.safetensors", seed=0):
    head, net, _ = example(name)
    fields = recipe(name, epochs)
    if seed:
        fields["seed"] = str(seed)
    cfg = ",\n  ".join(f"{k}: {v}" for k, v in fields.items())
    if SIZE.get(name):
        data = (f"subset(transform(fashion_mnist(), [to_rgb(), resize({SIZE[name]})]), "
                f"{train}, 10000)")
    else:
        data = "mnist()"
    return (f"{head}\nlet data = {data}\nlet cfg = TrainConfig {{\n  {cfg},\n}}\n"
            f"let model = init_for({net}, data.train, cfg.seed)\n"
            f"save(model, {init!r})\n".replace("'", '"') +
            "fit(model, data, cfg)\n")


def run_nabla(binary, name, train, epochs, data_dir, init, seed=0):
    prog = nabla_program(name, train, epochs, init, seed)
    with tempfile.NamedTemporaryFile("w", suffix=".net", delete=False, dir=tempfile.gettempdir()) as f:
        f.write(prog)
        path = f.name
    cmd = [binary, "run", path]
    if SIZE.get(name):
        cmd[2:2] = ["--data", data_dir]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    os.unlink(path)
    if p.returncode != 0:
        raise SystemExit(f"nabla failed on {name}:\n{p.stdout}\n{p.stderr}")
    out = p.stdout
    params = int(re.search(r": (\d+) parameters", out).group(1))
    steps = int(re.search(r"(\d+) steps of", out).group(1))
    epochs_seen = re.findall(r"Epoch \d+/\d+: loss=([0-9.eE+-]+) lr=[0-9.eE+-]+ \((\d+)ms\)", out)
    acc = float(re.search(r"val accuracy: \d+/\d+ = ([0-9.]+)%", out).group(1))
    ms = [int(e[1]) for e in epochs_seen]
    return {
        "params": params,
        "step_ms": sum(ms) / (len(ms) * steps),
        "epoch_s": sum(ms) / len(ms) / 1000,
        "loss0": float(epochs_seen[0][0]),
        "loss1": float(epochs_seen[-1][0]),
        "acc": acc,
        "wall": wall,
    }


# ---------------------------------------------------------------- PyTorch

def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    import numpy as np
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def dataset(name, train, data_dir):
    """(train x, train y, test x, test y): float images [N, C, H, W] in [0, 1], as
    nabla's transforms make them."""
    import torch
    import torch.nn.functional as F
    if SIZE.get(name):
        d = os.path.join(data_dir, "fashion-mnist")
        if not os.path.isdir(d):
            d = data_dir
        tr, te = "train", "t10k"
        xs = [idx(os.path.join(d, f"{s}-images-idx3-ubyte.gz")) for s in (tr, te)]
        ys = [idx(os.path.join(d, f"{s}-labels-idx1-ubyte.gz")) for s in (tr, te)]
        xs[0], ys[0] = xs[0][:train], ys[0][:train]
    else:
        d = os.path.join(ROOT, "data", "mnist-10k")
        xs = [idx(os.path.join(d, f"{s}-images-idx3-ubyte.gz")) for s in ("train", "t10k")]
        ys = [idx(os.path.join(d, f"{s}-labels-idx1-ubyte.gz")) for s in ("train", "t10k")]
    out = []
    for x, y in zip(xs, ys):
        x = torch.from_numpy(x.copy()).float().div(255).unsqueeze(1)
        if SIZE.get(name):
            n = SIZE[name]
            parts = [F.interpolate(x[i:i + 2048], size=(n, n), mode="bilinear",
                                   align_corners=False, antialias=True)
                     for i in range(0, len(x), 2048)]
            x = torch.cat(parts).expand(-1, 3, -1, -1).contiguous()
        out += [x, torch.from_numpy(y.astype("int64"))]
    return out


def learning_rate(base, warm, epochs, schedule, epoch, s, steps):
    """std.train's `learning_rate`, step by step."""
    done = epoch + s / steps
    if done < warm:
        return base * (done + 1.0 / steps) / warm
    if schedule == "cosine":
        progress = (done - warm) / max(epochs - warm, 1.0)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def run_torch(name, train, epochs, data_dir, init, seed=0):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, HERE)
    import torch_nets
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    f = recipe(name, epochs)
    xtr, ytr, xte, yte = dataset(name, train, data_dir)
    model = torch_nets.build(name, image_size=SIZE.get(name, 28))
    # nabla's initial weights: the two runs differ by the framework only (nabla's
    # initializers are not torchvision's: He-normal dense heads, for one).
    from safetensors.torch import load_file
    model.load_state_dict(load_file(init), strict=True)
    opt_name, o = call(f["optimizer"])
    lr = float(o.get("lr", o.get(0, "0.001")))
    wd = float(o.get("weight_decay", "0.0" if opt_name != "adamw" else "0.05"))
    if opt_name in ("sgd", "momentum", "nesterov"):
        mom = 0.0 if opt_name == "sgd" else float(o.get("momentum", "0.9"))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom,
                              nesterov=opt_name == "nesterov", weight_decay=wd)
    elif opt_name in ("adam", "adamw"):
        cls = torch.optim.AdamW if opt_name == "adamw" else torch.optim.Adam
        opt = cls(model.parameters(), lr=lr, weight_decay=wd,
                  betas=(float(o.get("beta1", "0.9")), float(o.get("beta2", "0.999"))),
                  eps=float(o.get("eps", "1e-8")))
    else:
        raise SystemExit(f"{name}: optimizer {opt_name} is not mirrored here")
    schedule = call(f.get("schedule", "constant()"))[0]
    warm = float(f.get("warmup_epochs", "0"))
    smoothing = float(f.get("label_smoothing", "0.0"))
    batch = int(f.get("batch", "64"))
    pad, flip = 0, 0.0
    for a in split_top(f.get("augment", "[]").strip("[]")):
        k, args = call(a)
        if k == "random_crop":
            pad = int(args.get("pad", args.get(0, "4")))
        elif k == "hflip":
            flip = float(args.get("p", args.get(0, "0.5")))
    mean = floats(f["normalize_mean"]) if "normalize_mean" in f else None
    std = floats(f["normalize_std"]) if "normalize_std" in f else None

    def normalize(x):
        if mean is None:
            return x
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        return (x - m) / s

    def augment(x):
        if pad:
            h, w = x.shape[-2:]
            xp = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (len(x),))
            dx = torch.randint(0, 2 * pad + 1, (len(x),))
            x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])
        if flip:
            which = torch.rand(len(x)) < flip
            x = torch.where(which.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    n = len(xtr)
    steps = (n + batch - 1) // batch
    losses, times = [], []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n)
        total, count = 0.0, 0
        t = time.perf_counter()
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = learning_rate(lr, warm, epochs, schedule, epoch, s, steps)
            i = order[s * batch:(s + 1) * batch]
            x = normalize(augment(xtr[i]))
            loss = F.cross_entropy(model(x), ytr[i], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            count += 1
        times.append(time.perf_counter() - t)
        losses.append(total / count)
        print(f"  torch {name} epoch {epoch + 1}/{epochs}: loss={losses[-1]:.6f} ({times[-1]:.1f}s)",
              flush=True)
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(xte), 500):
            right += (model(normalize(xte[i:i + 500])).argmax(1) == yte[i:i + 500]).sum().item()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms": sum(times) / (len(times) * steps) * 1000,
        "epoch_s": sum(times) / len(times),
        "loss0": losses[0],
        "loss1": losses[-1],
        "acc": 100.0 * right / len(xte),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="*", default=NETS, choices=NETS)
    p.add_argument("--data", default=os.environ.get("NABLA_DATA"),
                   help="a directory holding fashion-mnist/ (default: $NABLA_DATA)")
    p.add_argument("--nabla", default=os.path.join(ROOT, "target", "release", "nabla"))
    p.add_argument("--train", type=int, default=5000,
                   help="Fashion-MNIST training examples for the large nets (default 5000)")
    p.add_argument("--cifar-train", type=int, default=30000,
                   help="Fashion-MNIST training examples for cifar_bn (default 30000)")
    p.add_argument("--epochs", type=int, default=4,
                   help="epochs for the Fashion-MNIST nets (the MNIST nets keep their examples' 12)")
    p.add_argument("--torch", action="store_true", help="also train the PyTorch twins")
    p.add_argument("--seed", type=int, default=0,
                   help="TrainConfig.seed (initial weights, shuffle, augmentation) and PyTorch's")
    p.add_argument("--print-program", metavar="NET", help="print the nabla program for NET and exit")
    a = p.parse_args()
    if a.print_program:
        print(nabla_program(a.print_program, a.train, a.epochs, seed=a.seed))
        return
    if any(SIZE.get(n) for n in a.nets) and not a.data:
        raise SystemExit("Fashion-MNIST is needed: pass --data DIR (a directory holding fashion-mnist/)")
    rows = []
    for name in a.nets:
        epochs = a.epochs if SIZE.get(name) else int(example(name)[2]["epochs"])
        train = a.cifar_train if name == "cifar_bn" else a.train
        init = os.path.join(tempfile.gettempdir(), f"zoo-{os.getpid()}-{name}-init.safetensors")
        r = run_nabla(a.nabla, name, train, epochs, a.data, init, a.seed)
        print(f"nabla {name}: {r}", flush=True)
        t = run_torch(name, train, epochs, a.data, init, a.seed) if a.torch else None
        os.unlink(init)
        if t:
            print(f"torch {name}: {t}", flush=True)
        rows.append((name, epochs, train if SIZE.get(name) else 7996, r, t))
    print()
    print(f"{'net':<16}{'params':>11}{'examples':>10}{'epochs':>7}  {'ms/step':>8}{'s/epoch':>9}"
          f"{'loss first':>11}{'loss last':>10}{'test acc':>9}   PyTorch: {'ms/step':>8}{'s/epoch':>9}"
          f"{'loss first':>11}{'loss last':>10}{'test acc':>9}{'Δ acc':>7}")
    for name, epochs, n, r, t in rows:
        line = (f"{name:<16}{r['params']:>11,}{n:>10,}{epochs:>7}  {r['step_ms']:>8.1f}{r['epoch_s']:>9.1f}"
                f"{r['loss0']:>11.4f}{r['loss1']:>10.4f}{r['acc']:>8.2f}%")
        if t:
            line += (f"            {t['step_ms']:>8.1f}{t['epoch_s']:>9.1f}{t['loss0']:>11.4f}"
                     f"{t['loss1']:>10.4f}{t['acc']:>8.2f}%{r['acc'] - t['acc']:>+7.2f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
