"""The same train steps as `nabla bench` in PyTorch (eager and torch.compile) and JAX
(jax.jit), for comparison on the same machine in the same session.

Run from a local venv (never needed by the tests):
    python3 -m venv .venv && .venv/bin/pip install torch jax numpy
    .venv/bin/python bench/anchors.py mlp --optimizer sgd --batch 128

Prints one `json {...}` line per framework: median step time in ms over --steps steps
after a warm-up, compile time where there is one, and memory: the process's peak
resident set (VmHWM) and its growth over the resident set after importing the
framework (run one framework per process, with --only, for a peak of its own). Workloads are the nets of
examples/: `linear` (784-10), `mlp` (784-512-512-10), `cnn` (mnist_cnn.net: four 3×3
convolutions with batchnorm and ReLU, two max-pools, 3136-512-10), and any other example by
its name (`cifar_bn`, `resnet34`, ...: the PyTorch twins of bench/torch_nets.py, 10 classes),
at the input size --input C,H,W (default: the one the example declares). JAX runs the MLPs
only.
"""
import argparse
import json
import statistics
import time


def rss_mib(field):
    """A field of /proc/self/status (VmRSS: now, VmHWM: peak) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory(baseline):
    peak = rss_mib("VmHWM")
    return {"peak_mib": peak, "growth_mib": None if peak is None or baseline is None else peak - baseline}


SHORT = {"linear": "mnist_linear", "mlp": "mnist_mlp", "cnn": "mnist_cnn"}


def torch_model(name, shape):
    import torch.nn as nn

    if name not in SHORT:
        import torch_nets

        return torch_nets.build(name, image_size=shape[-1])
    if name == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if name == "cnn":
        def block(cin, c):
            return [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10))
    raise SystemExit(f"unknown workload {name}")


def time_steps(step, steps, warmup=5):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def input_shape(args):
    if args.input:
        return tuple(int(d) for d in args.input.split(","))
    import torch_nets

    return torch_nets.INPUT[SHORT.get(args.workload, args.workload)]


def bench_torch(args, compiled):
    import torch

    baseline = rss_mib("VmRSS")
    torch.manual_seed(0)
    shape = input_shape(args)
    model = torch_model(args.workload, shape)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01) if args.optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    compile_ms = None
    if compiled:
        step = torch.compile(step)
        t = time.perf_counter()
        step()
        compile_ms = (time.perf_counter() - t) * 1e3
    median = time_steps(step, args.steps)
    return {"framework": "torch.compile" if compiled else "pytorch eager", "median_ms": median, "compile_ms": compile_ms, **memory(baseline)}


def bench_jax(args):
    import jax
    import jax.numpy as jnp

    baseline = rss_mib("VmRSS")
    key = jax.random.PRNGKey(0)
    def dense(key, i, o):
        return {"w": jax.random.normal(key, (i, o)) * (2.0 / i) ** 0.5, "b": jnp.zeros(o)}
    if args.workload == "linear":
        sizes = [784, 10]
    elif args.workload == "mlp":
        sizes = [784, 512, 512, 10]
    else:
        return None  # the CNN is measured in PyTorch only
    keys = jax.random.split(key, len(sizes))
    params = [dense(k, i, o) for k, i, o in zip(keys, sizes, sizes[1:])]

    def loss(params, x, y):
        h = x.reshape(x.shape[0], -1)
        for i, p in enumerate(params):
            h = h @ p["w"] + p["b"]
            if i + 1 < len(params):
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    lr = 0.01 if args.optimizer == "sgd" else 1e-3
    if args.optimizer == "sgd":
        @jax.jit
        def step(params, x, y):
            l, g = jax.value_and_grad(loss)(params, x, y)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, g), l
        state = params
        def run():
            nonlocal state
            state, l = step(state, x, y)
            l.block_until_ready()
    else:
        @jax.jit
        def step(params, m, v, t, x, y):
            l, g = jax.value_and_grad(loss)(params, x, y)
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
            params = jax.tree_util.tree_map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
            return params, m, v, l
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        state = (params, zeros, zeros, 1.0)
        def run():
            nonlocal state
            p, m, v, t = state
            p, m, v, l = step(p, m, v, t, x, y)
            state = (p, m, v, t + 1)
            l.block_until_ready()
    x = jax.random.normal(key, (args.batch, 1, 28, 28))
    y = jax.random.randint(key, (args.batch,), 0, 10)
    t = time.perf_counter()
    run()
    compile_ms = (time.perf_counter() - t) * 1e3
    median = time_steps(run, args.steps)
    return {"framework": "jax.jit", "median_ms": median, "compile_ms": compile_ms, **memory(baseline)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", help="linear, mlp, cnn, or an example's name (cifar_bn, resnet34, ...)")
    p.add_argument("--input", help="C,H,W of the input (default: the example's own)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--only", default="torch,compile,jax")
    args = p.parse_args()
    only = args.only.split(",")
    results = []
    if "torch" in only:
        results.append(bench_torch(args, compiled=False))
    if "compile" in only and args.workload in ("linear", "mlp"):
        try:
            results.append(bench_torch(args, compiled=True))
        except Exception as e:  # torch.compile needs a C compiler; say so rather than fail
            print(f"torch.compile unavailable: {e}")
    if "jax" in only:
        r = bench_jax(args)
        if r:
            results.append(r)
    for r in results:
        print("json " + json.dumps(r))


if __name__ == "__main__":
    main()
