"""Writes the state-dict keys and shapes of the PyTorch twins of the nine example nets to
tests/testdata/torch_keys/NET.txt (one `key shape` line each, shape as `a,b,c`, empty for
a scalar). `tests/torch_names.rs` checks that nabla names and shapes the examples'
parameters and state exactly so. Run from a venv with torch and torchvision:

    python bench/torch_keys.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from torch_nets import NETS, build  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "testdata", "torch_keys")


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in NETS:
        model = build(name)
        lines = [
            f"{k} {','.join(str(d) for d in v.shape)}"
            for k, v in model.state_dict().items()
        ]
        with open(os.path.join(OUT, f"{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:16} {len(lines):4} keys {params:>10,} parameters")


if __name__ == "__main__":
    main()
