"""Baseline vs MHE vs half-space MHE vs RP / AP / Adv / G-CoMHE on a small CNN.

Data: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped
inside the package: no download). A fixed stratified split (``--split-seed``)
gives ``--train-size`` training images and the rest as the test set; each
method is trained from the same ``--seeds`` (model init, batch order and the
regularizer's random projections), and the final test accuracy is reported
as mean +- std over seeds, with each layer's final energy and the time the
regularizer adds to a training step, naive (backend="reference", N x N
matrices) vs fused (backend="cpu").

The training recipe follows the original MHE/CoMHE scripts where it can:
SGD momentum 0.9, lr 0.1, weight decay 5e-4 on the network's weights, lr x0.1
twice (at 50% and 75% of training), loss = cross-entropy + regularizer, the
regularizers with their default (original) settings.

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python examples/digits_cnn.py            # 8.7 min on 2 loaded cores
    PYTHONPATH=. python examples/digits_cnn.py --seeds 2 --epochs 5 --out /tmp/x  # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from comhe_kernels import reference, regularizers
from comhe_kernels.regularizers import MHE, CoMHE

# name -> regularizer settings (None: no regularizer); everything else is the default.
METHODS = {
    "baseline": None,
    "mhe": dict(variant="mhe", half_space=False),
    "half_mhe": dict(variant="mhe"),
    "rp": dict(variant="rp"),
    "ap": dict(variant="ap"),
    "adv": dict(variant="adv"),
    "group": dict(variant="group"),
}
LABELS = {
    "baseline": "baseline (no regularizer)",
    "mhe": "MHE, s = 2",
    "half_mhe": "half-space MHE, s = 2",
    "rp": "RP-CoMHE (pd 40, pn 20)",
    "ap": "AP-CoMHE (pd 30)",
    "adv": "Adv-CoMHE (pd 30, 10 steps)",
    "group": "G-CoMHE (4 groups)",
}


def load_split(train_size: int, split_seed: int):
    """(x_train, y_train, x_test, y_test): a stratified split of the 1797 digits,
    standardized with the training set's mean and std."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    y = torch.tensor(data.target, dtype=torch.long)
    if not 10 <= train_size <= len(y) - 10:
        raise ValueError(f"train_size must be in [10, {len(y) - 10}], got {train_size}")
    g = torch.Generator().manual_seed(split_seed)
    # Per-class training counts proportional to the class sizes, rounded by
    # largest remainder so that they add up to exactly train_size.
    sizes = torch.bincount(y, minlength=10)
    quota = train_size * sizes.double() / len(y)
    counts = quota.floor().long()
    counts[torch.argsort(quota - counts, descending=True)[: train_size - int(counts.sum())]] += 1
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        train_idx.append(idx[: counts[c]])
        test_idx.append(idx[counts[c] :])
    train_idx, test_idx = torch.cat(train_idx), torch.cat(test_idx)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def make_cnn(width: int = 32) -> nn.Sequential:
    """A small VGG-style CNN: 3 conv-BN-ReLU layers, one FC, the classifier.

    Neuron counts and fan-ins (width 32): conv 32 x 9 (the input layer:
    unprojected in CoMHE), conv 32 x 288, conv 64 x 288, fc 128 x 256,
    classifier 10 x 128. The middle three are projected (fan-in > pd).
    """
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4, 4 * width), nn.ReLU(),
        nn.Linear(4 * width, 10),
    )


def make_regularizer(method: str, model: nn.Module, optimizer, seed: int, backend: str = "auto"):
    settings = METHODS[method]
    if settings is None:
        return None
    settings = dict(settings)
    variant = settings.pop("variant")
    if variant in ("rp", "ap", "adv"):
        settings["generator"] = seed
    if variant in ("ap", "adv"):
        settings["lr"] = optimizer  # the projection's steps follow the network's lr schedule
    return CoMHE(model, variant, backend=backend, **settings)


def energy_probe(model: nn.Module) -> dict[str, float]:
    """The same yardstick for every method: each layer's unprojected power-2
    energy, half-space for the hidden layers, full-space for the classifier."""
    return MHE(model, 2).layer_energies()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train_one(method: str, seed: int, data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_cnn(args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [total // 2, (3 * total) // 4], gamma=0.1)
    reg = make_regularizer(method, model, optimizer, seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            ce = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss = ce + reg() if reg is not None else ce
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "seed": seed,
        "test_acc": accuracy(model, x_test, y_test),
        "train_acc": accuracy(model, x_train, y_train),
        "final_ce": ce.item(),
        "energies": energy_probe(model),
        "train_seconds": seconds,
    }


@contextlib.contextmanager
def original_gram_form():
    """Inside: the regularizers compute every energy with the original code's
    formula (normalize, W W^T, 2 - 2c, N x N elementwise, masked sum; autograd
    backward), i.e. comhe_kernels.reference with exact=False, instead of the op.
    Benchmark only: this is the naive code researchers run today. Every
    energy of the regularizers is one call of the op in regularizers/energy.py."""
    op = regularizers.energy.hyperspherical_energy

    def gram_form(x, power, *, backend, **kwargs):
        return reference.hyperspherical_energy(x, power, exact=False, **kwargs)

    regularizers.energy.hyperspherical_energy = gram_form
    try:
        yield
    finally:
        regularizers.energy.hyperspherical_energy = op


# timing column -> (regularizer backend, use the original gram-form code)
TIMING_COLUMNS = {"naive_exact": ("reference", False), "naive_gram": ("reference", True), "fused": ("cpu", False)}


def time_regularizer_step(reg, repeats: int) -> float:
    """Median seconds of one regularizer forward + backward (what it adds to a step)."""
    times = []
    for i in range(repeats + 5):  # 5 warm-up calls (extension load, allocator)
        t = time.perf_counter()
        reg().backward()
        if i >= 5:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def timing_table(args) -> list[dict]:
    """Seconds added per training step by each regularizer on the example's CNN
    (independent of the batch: the regularizer sees only weights), and by the
    classifier term alone for wide classifiers, where N x N starts to cost.

    Columns: naive_exact = backend "reference" (difference-form distances via
    cdist, N x N; AP's objective with N x N cosines); naive_gram = the same with
    the original code's gram-form energy (fast matmul, fp32 cancellation for
    close pairs); fused = backend "cpu" (the op; AP's objective via Gram identity).
    """
    rows = []
    torch.manual_seed(0)
    model = make_cnn(args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    def measure(row, build, repeats):
        for column, (backend, gram) in TIMING_COLUMNS.items():
            with original_gram_form() if gram else contextlib.nullcontext():
                row[column] = time_regularizer_step(build(backend), repeats)
        rows.append(row)

    for method, settings in METHODS.items():
        if settings is not None:
            measure({"setting": f"digits CNN, {LABELS[method]}"},
                    lambda backend: make_regularizer(method, model, optimizer, 0, backend), args.timing_repeats)
    for classes in args.wide_classes:
        head = nn.Linear(128, classes)
        measure({"setting": f"classifier term only, N = {classes} classes, k = 128"},
                lambda backend: MHE(head, 2, backend=backend), max(3, args.timing_repeats // 10))
    return rows


def summarize(results: list[dict], methods: list[str]) -> list[dict]:
    table = []
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        accs = [100 * r["test_acc"] for r in runs]
        layers = runs[0]["energies"].keys()
        table.append({
            "method": m,
            "runs": len(runs),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "energies": {k: statistics.mean(r["energies"][k] for r in runs) for k in layers},
            "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        })
    return table


def markdown(table, timing, conditions) -> str:
    layers = list(table[0]["energies"])
    out = [
        f"Test accuracy (%) on {conditions['test_size']} held-out digits, mean +- std over "
        f"{table[0]['runs']} seeds; final energy of each layer (mean over seeds; power 2, half-space "
        "for hidden layers, full-space for the classifier; lower = more diverse neurons); "
        "training time per run.",
        "",
        "| method | test acc (%) | " + " | ".join(f"E[{n}]" for n in layers) + " | s / run |",
        "|---|---|" + "---|" * len(layers) + "---|",
    ]
    for row in table:
        e = " | ".join(f"{row['energies'][n]:.4f}" for n in layers)
        out.append(
            f"| {LABELS[row['method']]} | {row['test_acc_mean']:.2f} +- {row['test_acc_std']:.2f} | {e} "
            f"| {row['train_seconds']:.1f} |"
        )
    out += [
        "",
        "Time the regularizer adds per training step (forward + backward, median, ms). naive exact: "
        'backend="reference" (N x N difference-form distances); naive gram: the original code\'s '
        "formula 2 - 2 W W^T (N x N, matmul); fused: the op (backend=\"cpu\").",
        "",
        "| setting | naive exact | naive gram (original code) | fused | gram / fused |",
        "|---|---|---|---|---|",
    ]
    for row in timing:
        out.append(
            f"| {row['setting']} | {1e3 * row['naive_exact']:.2f} | {1e3 * row['naive_gram']:.2f} "
            f"| {1e3 * row['fused']:.2f} | {row['naive_gram'] / row['fused']:.1f}x |"
        )
    out += ["", "Conditions: " + ", ".join(f"{k} = {v}" for k, v in conditions.items())]
    return "\n".join(out) + "\n"


def conditions_of(args, data) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = "unknown"
    return {
        "train_size": len(data[0]), "test_size": len(data[2]), "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "width": args.width, "seeds": args.seeds,
        "split_seed": args.split_seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"), "cpu": _cpu_name(),
        "machine": f"{os.cpu_count()} logical cores, {platform.machine()}", "git": sha,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=8, help="runs per method, seeds 0..n-1")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--train-size", type=int, default=600, help="training images; the other 1197 are the test set")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: these layers are too small to split; measured faster on 2 shared cores)")
    p.add_argument("--timing-repeats", type=int, default=50)
    p.add_argument("--wide-classes", type=int, nargs="*", default=[1024, 4096])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_split(args.train_size, args.split_seed)
    conditions = conditions_of(args, data)
    print(f"digits: {len(data[0])} train / {len(data[2])} test; {args.seeds} seeds x {len(args.methods)} methods")
    start = time.perf_counter()
    results = []
    for method in args.methods:
        for seed in range(args.seeds):
            r = train_one(method, seed, data, args)
            results.append(r)
            print(f"  {method:9s} seed {seed}: test acc {100 * r['test_acc']:.2f}%  ({r['train_seconds']:.1f} s)",
                  flush=True)
    table = summarize(results, args.methods)
    timing = timing_table(args)
    conditions["total_minutes"] = round((time.perf_counter() - start) / 60, 1)
    conditions["load_average_at_end"] = round(os.getloadavg()[0], 2)  # other users of the machine count too
    text = markdown(table, timing, conditions)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digits_cnn.md").write_text(text)
    (args.out / "digits_cnn.json").write_text(json.dumps(
        {"conditions": conditions, "summary": table, "timing": timing, "runs": results,
         "command": " ".join([sys.executable, *sys.argv])}, indent=1))
    print(f"wrote {args.out / 'digits_cnn.md'} and digits_cnn.json")


if __name__ == "__main__":
    main()
