"""The presets: which cases a run measures, with which providers, and the targets they are held to."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .cases import Case
from .runner import Plan
from .verdicts import FUSED, criterion

# The dimensions of a group that the command line's lists replace.
DIMENSIONS = ("op", "b", "n", "m", "k", "power", "half_space", "dtype", "mode", "inputs")


@dataclass(frozen=True)
class Group:
    """A block of a preset: every combination of these lists, run by these
    providers (None: all; FUSED: every fused backend). m = 0 in a
    cross_energy group means M = N; power None: "g2" for the uniformity loss,
    else "1"."""

    n: tuple
    k: tuple
    power: tuple | None = None
    half_space: tuple = (False,)
    dtype: tuple = ("float32",)
    mode: tuple = ("fwd+bwd",)
    providers: tuple | None = None
    op: tuple = ("hyperspherical_energy",)
    b: tuple = (1,)
    m: tuple = (0,)
    inputs: tuple = ("random",)


@dataclass(frozen=True)
class Preset:
    """A named run. devices None: cuda where torch sees one, else cpu. The
    timing knobs are the preset's unless the command line gives them."""

    description: str
    groups: tuple
    devices: tuple | None = None
    rep_seconds: float = 2.0
    warmup_seconds: float = 1.0
    min_reps: int = 3
    max_reps: int = 20
    max_call_seconds: float = 60.0
    criteria: tuple = ()


# The performance acceptance of the core op on the CPU (float32, s = 1,
# forward + backward, ratios measured in the same run), issue 14's inputs
# that must cost no more than 3x random ones, and issue 15's uniformity loss.
ACCEPTANCE = (
    criterion("N=16384 k=32: fused >= 40x faster than the reference", "cpu", "speedup_vs_reference", 40, n=16384, k=32),
    criterion("N=16384 k=32: fused >= 30x faster than pykeops", "cpu", "speedup_vs_keops", 30, n=16384, k=32),
    criterion("N=16384 k=3: fused >= 150x faster than the reference", "cpu", "speedup_vs_reference", 150, n=16384, k=3),
    criterion("N=16384 k=256: fused under 1.0 s", "cpu", "time_median_s", 1.0, n=16384, k=256),
    criterion("N=65536 k=3: fused under 0.5 s", "cpu", "time_median_s", 0.5, n=65536, k=3),
    criterion("N=65536 k=32: fused under 3 s", "cpu", "time_median_s", 3.0, n=65536, k=32),
    criterion("N=65536 k=3: fused extra peak <= 64 MiB", "cpu", "peak_extra_mib", 64, n=65536, k=3),
    criterion("N=65536 k=32: fused extra peak <= 64 MiB", "cpu", "peak_extra_mib", 64, n=65536, k=32),
    criterion("N=65536: the reference is skipped, with the reason", "reference", "skipped", n=65536, k=32),
    *(
        criterion(
            f"N=8192 k={k} {inputs}: fused within 3x of random inputs' time",
            "cpu",
            "time_vs_random",
            3.0,
            n=8192,
            k=k,
            inputs=inputs,
        )
        for k in (1, 3, 32)
        for inputs in ("collapsed", "clusters")
    ),
    *(
        criterion(
            f"uniformity loss N={n} k={k}: >= 5x faster than Wang and Isola's formula",
            "uniformity_loss",
            "speedup_vs_pdist",
            5,
            op="uniformity_loss",
            n=n,
            k=k,
        )
        for n in (4096, 16384)
        for k in (32, 128)
    ),
)

# Issue 16's goals for every fused GPU backend (one H200, float32, s = 1,
# forward + backward) and issue 18's stricter ones for the CUDA C++ backend.
GPU_TARGETS = (
    criterion("N=65536 k=3: {fused} within 3 ms", FUSED, "time_median_s", 3e-3, n=65536, k=3),
    criterion("N=65536 k=32: {fused} within 3 ms", FUSED, "time_median_s", 3e-3, n=65536, k=32),
    criterion("N=65536 k=3: {fused} >= 10x faster than pykeops", FUSED, "speedup_vs_keops", 10, n=65536, k=3),
    criterion("N=65536 k=32: {fused} >= 10x faster than pykeops", FUSED, "speedup_vs_keops", 10, n=65536, k=32),
    *(
        criterion(
            f"N=16384 k={k}: {{fused}} >= 50x faster than the reference",
            FUSED,
            "speedup_vs_reference",
            50,
            n=16384,
            k=k,
        )
        for k in (3, 32, 256, 512)
    ),
    criterion("RP-CoMHE batch B=20 N=512 k=40: {fused} within 100 us", FUSED, "time_median_s", 1e-4, b=20, n=512, k=40),
    criterion("N=65536 k=3: cuda within 2 ms", "cuda", "time_median_s", 2e-3, n=65536, k=3),
    criterion("N=65536 k=32: cuda within 2 ms", "cuda", "time_median_s", 2e-3, n=65536, k=32),
    criterion("N=262144 k=32: {fused} extra peak <= 256 MiB (O(N k))", FUSED, "peak_extra_mib", 256, n=262144, k=32),
)

_GPU_PROVIDERS = ("reference", "compiled", "keops", FUSED)

PRESETS = {
    # Under 2 minutes on a 2-core AVX2-only machine, where N = 256, 1024, 4096
    # took 188 s: one size. A run's time is mostly its worker processes' start
    # and torch.compile's compilation, per size: in alternating runs on 2 Zen 4
    # cores (load 8-10) N = 256, 1024, 4096 took 266 s, N = 512, 2048 179 s,
    # N = 2048 70-106 s (CPU time 0.36x of the three sizes': ~70 s there).
    "quick": Preset(
        "every provider at N = 2048, k = 32, s = 1, float32, forward+backward (about a minute on 2 cores)",
        (Group(n=(2048,), k=(32,)),),
        rep_seconds=0.5,
        warmup_seconds=0.5,
        max_call_seconds=20.0,
    ),
    "full": Preset(
        "every provider, N = 1024 .. 65536, k = 3, 32, 256, s = 1, float32, forward+backward",
        (Group(n=(1024, 2048, 4096, 8192, 16384, 32768, 65536), k=(3, 32, 256)),),
        rep_seconds=3.0,
        max_call_seconds=60.0,
    ),
    "acceptance": Preset(
        "the CPU targets: reference, keops, cpu at N = 16384 and 65536; random, collapsed and clustered "
        "inputs at N = 8192; the uniformity loss against Wang and Isola's formula at N = 4096, 16384 "
        "(float32, forward+backward)",
        (
            Group(n=(16384,), k=(3, 32), providers=("reference", "keops", "cpu")),
            Group(n=(16384,), k=(256,), providers=("reference", "cpu")),
            Group(n=(65536,), k=(3, 32), providers=("reference", "cpu")),
            Group(n=(8192,), k=(1, 3, 32), providers=("cpu",), inputs=("random", "collapsed", "clusters")),
            Group(n=(4096, 16384), k=(32, 128), op=("uniformity_loss",), providers=("pdist", "uniformity_loss")),
        ),
        devices=("cpu",),
        rep_seconds=3.0,
        max_call_seconds=600.0,
        criteria=ACCEPTANCE,
    ),
    "gpu": Preset(
        "the GPU matrix: reference, compiled, keops and every fused CUDA backend, float32, s = 1, "
        "forward+backward: the RP-CoMHE batch (B = 20, N = 512, k = 40), N = 4096 .. 262144 x k = 3 .. 512, "
        "the classifier case (N = 100000, k = 512)",
        (
            Group(n=(512,), k=(40,), b=(20,), providers=_GPU_PROVIDERS),
            Group(n=(4096, 16384, 65536, 262144), k=(3, 32, 256, 512), providers=_GPU_PROVIDERS),
            Group(n=(100000,), k=(512,), providers=_GPU_PROVIDERS),
        ),
        devices=("cuda",),
        rep_seconds=0.3,
        warmup_seconds=0.2,
        min_reps=5,
        max_reps=50,
        max_call_seconds=5.0,
        criteria=GPU_TARGETS,
    ),
}
# Lists on the command line without a preset: one group, these where a list is missing.
CUSTOM_DEFAULT = Group(n=(1024, 4096), k=(32,))


def _power_of(group_power, op: str) -> tuple:
    return group_power or (("g2",) if op == "uniformity_loss" else ("1",))


def make_plan(
    groups, providers: dict, devices: tuple, seed: int, overrides: dict, only: tuple | None, dry_run: bool = False
) -> Plan:
    """Expand groups into (case, provider) items. overrides (dimension -> tuple)
    replace a group's lists; ``only`` replaces its providers. Within a series
    the cases run in increasing N, so that a slow provider's next time can be
    predicted and skipped; a case's providers run one after the other.

    A provider that cannot run here is left out, with its reason in
    ``not_run``; with ``dry_run`` it stays in (a dry run shows what a machine
    with that device would run). Raises ValueError for a combination that is
    not a case (e.g. the uniformity loss in the half space).
    """
    plan = Plan()
    reasons = {}
    seen = set()
    for group in groups:
        dims = {d: overrides.get(d) or getattr(group, d) for d in DIMENSIONS}
        names = only or group.providers or tuple(providers)
        names = tuple(dict.fromkeys(n for name in names for n in expand_providers(name, providers)))
        for device, op in itertools.product(devices, dims["op"]):
            rest = (dims["b"], dims["k"], _power_of(dims["power"], op))
            rest += (dims["half_space"], dims["dtype"], dims["mode"], dims["inputs"])
            for b, k, power, half, dtype, mode, inputs in itertools.product(*rest):
                for n in sorted(dims["n"]):
                    for m in dims["m"] if op == "cross_energy" else (0,):
                        m = (m or n) if op == "cross_energy" else 0
                        case = Case(n, k, power, half, dtype, mode, device, seed, op=op, b=b, m=m, inputs=inputs)
                        _add(plan, case, names, providers, reasons, seen, dry_run)
    return plan


def expand_providers(name: str, providers: dict) -> tuple:
    """The providers a name stands for: itself, every fused backend (FUSED), or
    its ISA-level variants (cpu: cpu@avx2, cpu@avx512 under --cpu-isa)."""
    if name == FUSED:
        return tuple(n for n, p in providers.items() if p.fused)
    if name in providers:
        return (name,)
    return tuple(n for n in providers if n.partition("@")[0] == name)


def _add(plan: Plan, case: Case, names: tuple, providers: dict, reasons: dict, seen: set, dry_run: bool) -> None:
    for name in names:
        provider = providers[name]
        if (case, name) in seen or case.op not in provider.ops:
            continue
        seen.add((case, name))
        key = (name, case.op, case.device)
        if key not in reasons:
            reasons[key] = provider.unavailable_reason(case.op, case.device)
        why = reasons[key]
        if why is not None:
            where = case.device if case.op == "hyperspherical_energy" else f"{case.op}, {case.device}"
            plan.not_run[f"{name} ({where})"] = why
        if why is None or (dry_run and provider.mismatch(case.op, case.device) is None):
            plan.items.append((case, name))
