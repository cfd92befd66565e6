"""Training agreement with PyTorch, step by step: one example net trained in nabla and in
PyTorch from the same initial weights, on the same batches in the same order, with its
example's recipe (optimizer, weight decay, schedule with warmup, label smoothing,
normalization; augmentation off, since its random draws are each framework's own), and
the loss of every step printed side by side.

Two f32 runs of the same recipe drift apart however exact both are: each step's rounding
differs, and training amplifies it. The scale of that drift is measured, not assumed:
PyTorch also runs the recipe in f64 (the truth for this instance), and each f32 run is
compared with it. nabla agrees with PyTorch when its distance from the f64 run is of
the order of PyTorch's own f32 distance from it; a difference of recipe (an optimizer
term, a batchnorm statistic, a learning rate) shows as nabla's distance growing well past
PyTorch's.

Prints per step: the learning rate, the three losses, nabla's and PyTorch f32's relative
distance from the f64 loss; at the end, each run's test accuracy (eval mode, batchnorm on
running statistics) and the largest relative distance of its final weights from the f64
run's.

    .venv/bin/python bench/train_agree.py --data ../data --net resnet34 --train 512 --epochs 3

Uses bench/zoo.py's data and recipes (Fashion-MNIST as 3×64×64 for the large nets).
Not run in CI: needs torch, torchvision and safetensors in a venv.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zoo  # noqa: E402

# Another example whose recipe the net trains with (--recipe), or None for its own.
RECIPE = None


def recipe(name, epochs, lr_scale):
    """zoo's recipe without augmentation, its optimizer's rate scaled by `lr_scale`."""
    fields = zoo.recipe(name, epochs)
    fields["augment"] = "[]"
    if lr_scale != 1.0:
        kind, args = zoo.call(fields["optimizer"])
        key = "lr" if "lr" in args else 0
        args[key] = f"{float(args.get(key, '0.001')) * lr_scale:.6g}"
        fields["optimizer"] = f"{kind}(" + ", ".join(
            v if isinstance(k, int) else f"{k}: {v}" for k, v in args.items()) + ")"
    return fields


def nabla_program(name, train, test, epochs, init, lr_scale):
    head, net, _ = zoo.example(name)
    fields = recipe(RECIPE or name, epochs, lr_scale)
    cfg = ",\n  ".join(f"{k}: {v}" for k, v in fields.items())
    data = (f"subset(transform(fashion_mnist(), [to_rgb(), resize({zoo.SIZE[name]})]), "
            f"{train}, {test})") if zoo.SIZE.get(name) else f"subset(mnist(), {train}, {test})"
    if "import std.data.*" not in head:
        head += "\nimport std.data.*"
    return f"""{head}
let data = {data}
let cfg = TrainConfig {{
  {cfg},
}}
let model = init_for({net}, data.train, cfg.seed)
save(model, "{init}")
check_recipe(cfg, data)
prepare(model, cfg)
let n = split_size(data.train)
let steps = (n + cfg.batch - 1) / cfg.batch
for epoch in 0..cfg.epochs {{
  let order = shuffle(n, cfg.seed * 1000 + epoch)
  for i in order {{
    print("order {{i}}")
  }}
  for s in 0..steps {{
    let lr = learning_rate(cfg, epoch, s, steps)
    let loss = train_batch(model, data.train, order, s * cfg.batch, lr, cfg.batch)
    print("step {{lr:.9}} {{loss:.9}}")
  }}
}}
report(model, data.test)
save(model, "{init}.final")
"""


def run_nabla(binary, name, train, test, epochs, data_dir, init, lr_scale):
    with tempfile.NamedTemporaryFile("w", suffix=".net", delete=False) as f:
        f.write(nabla_program(name, train, test, epochs, init, lr_scale))
        path = f.name
    cmd = [binary, "run", path] if not zoo.SIZE.get(name) else [binary, "run", "--data", data_dir, path]
    p = subprocess.run(cmd, capture_output=True, text=True)
    os.unlink(path)
    if p.returncode != 0:
        raise SystemExit(f"nabla failed:\n{p.stdout}\n{p.stderr}")
    order = [int(x) for x in re.findall(r"^order (\d+)$", p.stdout, re.M)]
    steps = [(float(a), float(b)) for a, b in re.findall(r"^step (\S+) (\S+)$", p.stdout, re.M)]
    acc = float(re.search(r"val accuracy: \d+/\d+ = ([0-9.]+)%", p.stdout).group(1))
    return order, steps, acc


def run_torch(name, train, test, epochs, data_dir, init, order, lrs, dtype, lr_scale):
    import torch
    import torch.nn.functional as F
    import torch_nets
    from safetensors.torch import load_file
    torch.set_num_threads(2)
    f = recipe(RECIPE or name, epochs, lr_scale)
    xtr, ytr, xte, yte = zoo.dataset(name, train, data_dir)
    xte, yte = xte[:test], yte[:test]
    model = torch_nets.build(name, image_size=zoo.SIZE.get(name, 28))
    model.load_state_dict(load_file(init), strict=True)
    model = model.to(dtype)
    opt_name, o = zoo.call(f["optimizer"])
    lr = float(o.get("lr", o.get(0, "0.001")))
    wd = float(o.get("weight_decay", "0.0" if opt_name != "adamw" else "0.05"))
    if opt_name in ("sgd", "momentum", "nesterov"):
        mom = 0.0 if opt_name == "sgd" else float(o.get("momentum", "0.9"))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom,
                              nesterov=opt_name == "nesterov", weight_decay=wd)
    else:
        cls = torch.optim.AdamW if opt_name == "adamw" else torch.optim.Adam
        opt = cls(model.parameters(), lr=lr, weight_decay=wd,
                  betas=(float(o.get("beta1", "0.9")), float(o.get("beta2", "0.999"))),
                  eps=float(o.get("eps", "1e-8")))
    smoothing = float(f.get("label_smoothing", "0.0"))
    batch = int(f.get("batch", "64"))
    mean = zoo.floats(f["normalize_mean"]) if "normalize_mean" in f else None
    std = zoo.floats(f["normalize_std"]) if "normalize_std" in f else None

    def normalize(x):
        x = x.to(dtype)
        if mean is None:
            return x
        return (x - torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)) / torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)

    n = len(xtr)
    steps = (n + batch - 1) // batch
    losses = []
    model.train()
    for k, step_lr in enumerate(lrs):
        epoch, s = divmod(k, steps)
        for g in opt.param_groups:
            g["lr"] = step_lr
        i = torch.tensor(order[epoch * n + s * batch: epoch * n + min((s + 1) * batch, n)])
        loss = F.cross_entropy(model(normalize(xtr[i])), ytr[i], label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    right = 0
    with torch.no_grad():
        for j in range(0, len(xte), 500):
            right += (model(normalize(xte[j:j + 500])).argmax(1) == yte[j:j + 500]).sum().item()
    weights = {k: v.detach().to(torch.float64).clone() for k, v in model.state_dict().items()}
    return losses, 100.0 * right / len(xte), weights


def weight_distance(a, b):
    """The largest over tensors of max|a − b| / max|b| (float state only)."""
    worst = 0.0
    for k, v in b.items():
        if not v.is_floating_point() or k.endswith("num_batches_tracked"):
            continue
        den = max(v.abs().max().item(), 1e-12)
        worst = max(worst, (a[k] - v).abs().max().item() / den)
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="resnet34", choices=zoo.NETS)
    p.add_argument("--data", default=os.environ.get("NABLA_DATA"),
                   help="a directory holding fashion-mnist/ (default: $NABLA_DATA)")
    p.add_argument("--nabla", default=os.path.join(zoo.ROOT, "target", "release", "nabla"))
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr-scale", type=float, default=1.0,
                   help="multiply the recipe's base rate (a deep net at its full rate from a random start is "
                        "chaotic: every f32 run, PyTorch's included, leaves the f64 one within a few steps)")
    p.add_argument("--recipe", choices=zoo.NETS,
                   help="train with another example's recipe (say resnet34's Nesterov, warmup and label "
                        "smoothing on cifar_bn, whose trajectories stay close enough to compare)")
    a = p.parse_args()
    global RECIPE
    RECIPE = a.recipe
    if zoo.SIZE.get(a.net) and not a.data:
        raise SystemExit("Fashion-MNIST is needed: pass --data DIR (a directory holding fashion-mnist/)")
    import torch
    from safetensors.torch import load_file
    init = os.path.join(tempfile.gettempdir(), f"agree-{os.getpid()}-{a.net}.safetensors")
    order, steps, acc = run_nabla(a.nabla, a.net, a.train, a.test, a.epochs, a.data, init, a.lr_scale)
    lrs = [lr for lr, _ in steps]
    t32, acc32, w32 = run_torch(a.net, a.train, a.test, a.epochs, a.data, init, order, lrs, torch.float32, a.lr_scale)
    t64, acc64, w64 = run_torch(a.net, a.train, a.test, a.epochs, a.data, init, order, lrs, torch.float64, a.lr_scale)
    wn = {k: v.to(torch.float64) for k, v in load_file(init + ".final").items()}
    os.unlink(init)
    os.unlink(init + ".final")
    scaled = f", base rate ×{a.lr_scale:g}" if a.lr_scale != 1.0 else ""
    print(f"{a.net}: {a.train} examples, {len(steps)} steps, recipe of examples/{a.recipe or a.net}.net without augmentation{scaled}")
    print(f"{'step':>5}{'lr':>10}{'nabla':>12}{'torch f32':>12}{'torch f64':>12}{'nabla-f64':>11}{'torch-f64':>11}")
    worst_n = worst_t = 0.0
    for k, ((lr, ln), lt, l64) in enumerate(zip(steps, t32, t64)):
        dn, dt = abs(ln - l64) / abs(l64), abs(lt - l64) / abs(l64)
        worst_n, worst_t = max(worst_n, dn), max(worst_t, dt)
        print(f"{k + 1:>5}{lr:>10.5f}{ln:>12.6f}{lt:>12.6f}{l64:>12.6f}{dn:>11.2e}{dt:>11.2e}")
    print(f"largest relative loss distance from f64: nabla {worst_n:.2e}, PyTorch f32 {worst_t:.2e}")
    print(f"final weights, largest relative distance from f64: nabla {weight_distance(wn, w64):.2e}, "
          f"PyTorch f32 {weight_distance(w32, w64):.2e}")
    print(f"test accuracy ({a.test} images): nabla {acc:.2f}%, PyTorch f32 {acc32:.2f}%, f64 {acc64:.2f}%")


if __name__ == "__main__":
    main()
