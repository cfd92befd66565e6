"""PyTorch reference for `nabla run examples/mnist_{linear,mlp}.net` and the Fashion-MNIST
comparison: the same data files, recipe (SGD, batch, epochs, normalization) and
initialization scheme (He normal weights, zero biases), timed per epoch.

    python bench/mnist_torch.py --net mlp [--data DIR] [--epochs 12] [--threads N]

Prints the book's epoch lines and `val accuracy` lines, then one `json {...}` line.
Not run in CI: install torch in a local venv (see docs/performance.md).
"""
import argparse, gzip, json, struct, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def idx(path):
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic, = struct.unpack(">I", raw[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, raw[4:4 + 4 * rank])
    return np.frombuffer(raw[4 + 4 * rank:], dtype=np.uint8).reshape(dims)


def split(d, prefix):
    x = idx(d / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(x).reshape(len(x), -1), torch.from_numpy(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=["linear", "mlp"], default="mlp")
    ap.add_argument("--data", default=str(ROOT / "data" / "mnist-10k"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--mean", type=float, default=None)
    ap.add_argument("--std", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--init", choices=["he", "torch"], default="he", help="torch: PyTorch's default Linear init")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = Path(a.data)
    xtr, ytr = split(d, "train")
    xte, yte = split(d, "t10k")
    if a.mean is not None:
        xtr = (xtr - a.mean) / a.std
        xte = (xte - a.mean) / a.std
    widths = [784, 10] if a.net == "linear" else [784, 512, 512, 10]
    layers = []
    for i in range(len(widths) - 1):
        lin = torch.nn.Linear(widths[i], widths[i + 1])
        if a.init == "he":  # He normal weights, zero biases: nabla's `dense`
            torch.nn.init.normal_(lin.weight, 0.0, (2.0 / widths[i]) ** 0.5)
            torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    lossf = torch.nn.CrossEntropyLoss()
    n = len(ytr)
    steps = (n + a.batch - 1) // a.batch
    epoch_ms = []
    acc = 0.0
    for epoch in range(a.epochs):
        g = torch.Generator().manual_seed(a.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        total = 0.0
        for s in range(steps):
            idx_ = order[s * a.batch:(s + 1) * a.batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xtr[idx_]), ytr[idx_])
            loss.backward()
            opt.step()
            total += loss.item()
        ms = (time.perf_counter() - t0) * 1e3
        epoch_ms.append(ms)
        print(f"Epoch {epoch + 1}/{a.epochs}: loss={total / steps:.6f} lr={a.lr:.6f} ({ms:.0f}ms)")
        with torch.no_grad():
            right = sum(int((model(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum()) for i in range(0, len(yte), 500))
        acc = right / len(yte)
        print(f"val accuracy: {right}/{len(yte)} = {100 * acc:.2f}%")
    print("json " + json.dumps({"net": a.net, "accuracy": acc, "median_epoch_ms": sorted(epoch_ms)[len(epoch_ms) // 2], "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
