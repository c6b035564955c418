"""--precision auto: bf16 autocast only where the device runs bf16 natively *and* a short probe of the
actual training step measures it faster; fp32 otherwise.

Why: the recipe's `--precision bf16` was tuned on a CPU with native bf16 (AMX); on an AVX2-only EPYC
PyTorch emulates bf16 and the same run took 8.7x longer. Native is not enough either: on that AMX CPU
a 784-128-8 model's step is 1.4x slower in bf16 (casts cost more than small matmuls save). No default
should be tuned to one machine, so the rule is decided here, once, by `decide` (pure: CPU flags and
probe timings in, a choice and its reason out, so tests exercise every branch on any machine);
`resolve_precision` gathers those inputs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.config import Precision, PrecisionRequest

# CPU flags (/proc/cpuinfo) under which PyTorch's bf16 matmuls run in hardware (oneDNN), best first.
NATIVE_CPU_FLAGS = {"amx_bf16": "native AMX bf16", "avx512_bf16": "native AVX-512 BF16",
                    "bf16": "native Arm BF16"}  # Arm's Features line names it plain "bf16"
# bf16 must beat fp32 by this much to be worth its accuracy (3 significant digits): a tie within the
# probe's noise keeps fp32. The default recipe's model on 2 AMX cores: 1.10-1.12x in the probe,
# 1.04-1.11x in the loop (examples/s), so it trains in bf16 there, as the recipe was tuned.
MIN_BF16_SPEEDUP = 1.05
PROBE_BUDGET_S = 1.0  # timed rounds stop after this (the warm-up steps come on top)...
PROBE_MIN_ROUNDS = 3  # ...but not before this many: one step per precision has no median to judge it by
# Each precision's fastest of up to 30 interleaved steps: 1.10-1.12x in 6 probes of the default recipe's
# model on an idle machine (0.42 s each); the fastest of 5-10 steps drifted 1.07-1.13x.
PROBE_MAX_ROUNDS = 30
# A probe whose median step is this many times its fastest (either precision) measured the machine's
# other load, not bf16: idle, 1.01-1.07 (models of 0.7-17 ms steps); with one of 2 cores busy, 1.5-18
# and "speedups" of 0.1-11x. Then auto keeps fp32 and says so.
MAX_PROBE_SPREAD = 1.5

log = logging.getLogger("vaeserve.train")


@dataclass(frozen=True)
class Probe:
    """Fastest measured training step (forward + backward) in each precision, and the probe's cost."""

    fp32_step_s: float
    bf16_step_s: float
    seconds: float
    spread: float = 1.0  # the larger median / fastest step of the two precisions
    rounds: int = 1  # steps timed per precision

    @property
    def speedup(self) -> float:
        """How many times faster bf16 ran than fp32 (below 1: slower)."""
        return self.fp32_step_s / max(self.bf16_step_s, 1e-12)


@dataclass(frozen=True)
class PrecisionDecision:
    """What a run asked for, what it used and why; saved with the checkpoint and in the manifest."""

    requested: PrecisionRequest
    precision: Precision
    reason: str
    native: str | None = None  # what makes bf16 native here, None where it is emulated
    probe: Probe | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["used"] = record.pop("precision")
        if self.probe is not None:
            record["probe"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in record["probe"].items()}
            record["probe"]["speedup"] = round(self.probe.speedup, 3)
        return record

    def log_line(self) -> str:
        return f"precision {self.requested} -> {self.precision}: {self.reason}"


def native_bf16(device_type: str, *, cpu_flags: frozenset[str], cuda_bf16: bool) -> str | None:
    """Why bf16 is native on this device ('native AMX bf16', ...), or None where it would be emulated."""
    if device_type == "cuda":
        return "native CUDA bf16" if cuda_bf16 else None
    if device_type == "cpu":
        return next((name for flag, name in NATIVE_CPU_FLAGS.items() if flag in cpu_flags), None)
    return None


def decide(requested: PrecisionRequest, *, device_type: str, cpu_flags: frozenset[str] = frozenset(),
           cuda_bf16: bool = False, probe: Probe | None = None, min_speedup: float = MIN_BF16_SPEEDUP,
           max_spread: float = MAX_PROBE_SPREAD) -> PrecisionDecision:
    """The precision rule: explicit fp32/bf16 as asked; auto -> bf16 only when native and a steady
    probe measured it at least min_speedup times faster than fp32, else fp32."""
    native = native_bf16(device_type, cpu_flags=cpu_flags, cuda_bf16=cuda_bf16)
    if requested != "auto":
        reason = "requested"
        if requested == "bf16" and native is None:
            reason += f"; {_not_native(device_type)}, so PyTorch emulates it: expect it slower than fp32"
        return PrecisionDecision(requested, requested, reason, native)
    if native is None:
        return PrecisionDecision(requested, "fp32", _not_native(device_type), native)
    if probe is None:
        return PrecisionDecision(requested, "fp32", f"{native}, but not measured", native)
    if probe.spread > max_spread:
        return PrecisionDecision(requested, "fp32", f"{native}, but the probe was disturbed (median step "
                                 f"{probe.spread:.1f}x the fastest: a busy machine?); --precision bf16 "
                                 "to use it anyway", native, probe)
    if probe.speedup < min_speedup:
        return PrecisionDecision(requested, "fp32", f"{native}, but the probe measured bf16 {probe.speedup:.2f}x "
                                 f"fp32's speed (needs {min_speedup}x)", native, probe)
    return PrecisionDecision(requested, "bf16", f"{native}, probe {probe.speedup:.2f}x faster than fp32", native, probe)


def _not_native(device_type: str) -> str:
    if device_type == "cuda":
        return "the GPU has no native bf16 (torch.cuda.is_bf16_supported(including_emulation=False) is False)"
    if device_type == "cpu":
        return "the CPU has no native bf16 (no amx_bf16, avx512_bf16 or Arm bf16 flag)"
    return f"no native bf16 known for {device_type} devices"


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags ('flags' on x86, 'Features' on Arm); where there is no
    /proc/cpuinfo, the bf16 features torch's own CPU checks report."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return _torch_cpu_flags()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return _torch_cpu_flags()


def _torch_cpu_flags() -> frozenset[str]:
    # Private helpers (torch 2.13 has them in torch.cpu); absent ones count as "no".
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, name in checks.items() if getattr(torch.cpu, name, lambda: False)())


def measure(step: Callable[[Precision], None], *, synchronize: Callable[[], None] = lambda: None,
            min_rounds: int = PROBE_MIN_ROUNDS, max_rounds: int = PROBE_MAX_ROUNDS,
            budget_s: float = PROBE_BUDGET_S, clock: Callable[[], float] = time.perf_counter) -> Probe:
    """Time step(precision) in fp32 and bf16: one warm-up each (kernel selection, oneDNN primitives),
    then interleaved rounds, keeping each one's fastest step (the least disturbed by other load)."""
    started = clock()
    for precision in ("fp32", "bf16"):
        step(precision)
    synchronize()
    times: dict[Precision, list[float]] = {"fp32": [], "bf16": []}
    for round_ in range(max_rounds):
        order: tuple[Precision, Precision] = ("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            t0 = clock()
            step(precision)
            synchronize()
            times[precision].append(clock() - t0)
        if round_ + 1 >= min_rounds and clock() - started > budget_s:
            break
    spread = max(statistics.median(t) / max(min(t), 1e-12) for t in times.values())
    return Probe(fp32_step_s=min(times["fp32"]), bf16_step_s=min(times["bf16"]),
                 seconds=clock() - started, spread=spread, rounds=len(times["fp32"]))


def resolve_precision(requested: PrecisionRequest, *, device: torch.device,
                      step: Callable[[Precision], None]) -> PrecisionDecision:
    """decide() on this machine: its flags, and a probe of `step` when auto meets native bf16."""
    flags = read_cpu_flags() if device.type == "cpu" else frozenset()
    # Without including_emulation=False, pre-Ampere GPUs report True and emulate.
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    probe = None
    if requested == "auto" and native_bf16(device.type, cpu_flags=flags, cuda_bf16=cuda_bf16) is not None:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        probe = measure(step, synchronize=sync)
    return decide(requested, device_type=device.type, cpu_flags=flags, cuda_bf16=cuda_bf16, probe=probe)


def rank_zeros_choice(decision: PrecisionDecision, device: torch.device) -> PrecisionDecision:
    """Rank 0's precision on every rank (DDP needs one; probes on different ranks may disagree)."""
    chosen = torch.tensor([decision.precision == "bf16"], dtype=torch.int32, device=device)
    dist.broadcast(chosen, src=0)
    precision: Precision = "bf16" if chosen.item() else "fp32"
    if precision == decision.precision:
        return decision
    return replace(decision, precision=precision, reason=f"rank 0's choice (here: {decision.reason})")


def log_decision(decision: PrecisionDecision) -> None:
    """One line for auto's choice; a warning for bf16 asked for where it is emulated."""
    if decision.requested == "auto":
        log.info(decision.log_line())
    elif decision.precision == "bf16" and decision.native is None:
        log.warning("%s (--precision auto would pick fp32 here)", decision.log_line())


def precision_record(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's precision record; for checkpoints from before --precision auto, the one its
    train_config implies (the precision was then always given explicitly or by default)."""
    if payload.get("precision"):
        return dict(payload["precision"])
    used = (payload.get("train_config") or {}).get("precision")
    if used is None:
        return None
    return {"requested": used, "used": used, "reason": "--precision or its fp32 default (the checkpoint predates auto)",
            "native": None, "probe": None}
