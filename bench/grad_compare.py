"""Compares nabla's gradient with PyTorch's and JAX's on the same parameters and batch.

    python bench/grad_compare.py [--nabla target/release/nabla]

1. `nabla run bench/grad_nabla.net` writes a fresh MLP's parameters and its gradient on
   the first 128 bundled training digits (safetensors);
2. this script loads those parameters into the same MLP in PyTorch (eager) and JAX,
   computes the same mean cross-entropy gradient in float32, and writes both;
3. `nabla run bench/grad_check.net` loads the three gradient sets with `load_tensors` and
   prints the worst relative error (max|a - b| / max|b| per tensor) of nabla against each.

Runs in a scratch directory. Not run in CI: needs torch, jax and safetensors in a venv.
"""
import argparse, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from mnist_torch import idx  # noqa: E402


def batch(n):
    d = ROOT / "data" / "mnist-10k"
    x = idx(d / "train-images-idx3-ubyte.gz")[:n].astype(np.float32) / 255.0
    y = idx(d / "train-labels-idx1-ubyte.gz")[:n].astype(np.int64)
    return x.reshape(n, -1), y


def layers(params):
    """[(K, weight [out, in] as torch.nn.Linear's, bias [out])] of `K.weight` / `K.bias`,
    in K order (the net's stage numbers)."""
    ks = sorted({int(k.split(".")[0]) for k in params if k.endswith(".weight")})
    return [(k, params[f"{k}.weight"], params[f"{k}.bias"]) for k in ks]


def torch_grads(params, x, y):
    import torch
    ws = [(k, torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) for k, w, b in layers(params)]
    h = torch.from_numpy(x)
    for i, (_, w, b) in enumerate(ws):
        h = h @ w.T + b
        if i < len(ws) - 1:
            h = torch.relu(h)
    loss = torch.nn.functional.cross_entropy(h, torch.from_numpy(y))
    loss.backward()
    out = {}
    for k, w, b in ws:
        out[f"{k}.weight"], out[f"{k}.bias"] = w.grad.numpy(), b.grad.numpy()
    return float(loss.detach()), out


def jax_grads(params, x, y):
    import jax, jax.numpy as jnp
    ws = layers(params)

    def loss(ps):
        h = jnp.asarray(x)
        for i, (w, b) in enumerate(ps):
            h = h @ w.T + b
            if i < len(ps) - 1:
                h = jax.nn.relu(h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), jnp.asarray(y)[:, None], axis=1))

    value, gs = jax.value_and_grad(loss)([(jnp.asarray(w), jnp.asarray(b)) for _, w, b in ws])
    out = {}
    for (k, _, _), (gw, gb) in zip(ws, gs):
        out[f"{k}.weight"], out[f"{k}.bias"] = np.asarray(gw), np.asarray(gb)
    return float(value), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nabla", default=str(ROOT / "target" / "release" / "nabla"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run = lambda f: subprocess.run([a.nabla, "run", str(ROOT / "bench" / f)], cwd=work, check=True)
        run("grad_nabla.net")
        params = load_file(f"{work}/grad_params.safetensors")
        x, y = batch(128)
        for name, f in [("torch", torch_grads), ("jax", jax_grads)]:
            try:
                value, g = f(params, x, y)
            except ImportError as e:
                print(f"{name}: not installed ({e})")
                continue
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in g.items()}, f"{work}/grad_{name}.safetensors")
            print(f"{name} loss {value:.9f}")
        run("grad_check.net")


if __name__ == "__main__":
    main()
