"""--precision auto: the rule (pure, with fake CPU flags and probe timings, so it is tested for CPUs this
machine is not), the probe's timing, and a real `vaeserve train` recording what it chose."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from training.precision import Probe, decide, measure, precision_record, read_cpu_flags

AVX2_EPYC = frozenset({"sse4_2", "avx", "avx2", "fma"})  # no bf16 in hardware: PyTorch emulates it
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
FASTER = Probe(fp32_step_s=0.0124, bf16_step_s=0.0065, seconds=0.4, spread=1.02, rounds=30)
SLOWER = Probe(fp32_step_s=0.0012, bf16_step_s=0.0017, seconds=0.1, spread=1.04, rounds=30)


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_a_probe() -> None:
    decision = decide("auto", device_type="cpu", cpu_flags=AVX2_EPYC, probe=FASTER)
    assert decision.precision == "fp32" and decision.native is None and decision.probe is None
    assert decision.log_line() == ("precision auto -> fp32: the CPU has no native bf16 "
                                   "(no amx_bf16, avx512_bf16 or Arm bf16 flag)")


def test_auto_with_native_bf16_that_the_probe_measures_slower_is_fp32() -> None:
    decision = decide("auto", device_type="cpu", cpu_flags=SAPPHIRE_RAPIDS, probe=SLOWER)
    assert decision.precision == "fp32" and decision.probe == SLOWER
    assert "native AMX bf16" in decision.reason and "0.71x" in decision.reason


def test_auto_with_native_bf16_that_the_probe_measures_faster_is_bf16() -> None:
    decision = decide("auto", device_type="cpu", cpu_flags=SAPPHIRE_RAPIDS, probe=FASTER)
    assert decision.precision == "bf16"
    assert decision.log_line() == "precision auto -> bf16: native AMX bf16, probe 1.91x faster than fp32"
    avx512_only = decide("auto", device_type="cpu", cpu_flags=AVX2_EPYC | {"avx512_bf16"}, probe=FASTER)
    assert avx512_only.precision == "bf16" and avx512_only.native == "native AVX-512 BF16"


@pytest.mark.parametrize("speedup, precision", [(1.04, "fp32"), (1.06, "bf16")])
def test_auto_needs_bf16_clearly_faster_not_a_tie(speedup: float, precision: str) -> None:
    probe = Probe(fp32_step_s=0.01 * speedup, bf16_step_s=0.01, seconds=0.4, spread=1.02, rounds=30)
    assert decide("auto", device_type="cpu", cpu_flags=SAPPHIRE_RAPIDS, probe=probe).precision == precision


def test_auto_keeps_fp32_when_the_probe_was_disturbed_by_other_load() -> None:
    busy = Probe(fp32_step_s=0.1, bf16_step_s=0.01, seconds=1.1, spread=8.0, rounds=5)  # a "10x" from noise
    decision = decide("auto", device_type="cpu", cpu_flags=SAPPHIRE_RAPIDS, probe=busy)
    assert decision.precision == "fp32" and "disturbed" in decision.reason and "--precision bf16" in decision.reason


@pytest.mark.parametrize("flags", [AVX2_EPYC, SAPPHIRE_RAPIDS])
@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_an_explicit_precision_is_used_as_given(requested: str, flags: frozenset[str]) -> None:
    decision = decide(requested, device_type="cpu", cpu_flags=flags, probe=SLOWER)  # type: ignore[arg-type]
    assert decision.precision == requested and decision.reason.startswith("requested")
    emulated = requested == "bf16" and flags == AVX2_EPYC
    assert ("emulates" in decision.reason) == emulated


def test_auto_on_cuda_follows_native_bf16_support_and_the_probe() -> None:
    assert decide("auto", device_type="cuda", cuda_bf16=False, probe=FASTER).precision == "fp32"
    assert decide("auto", device_type="cuda", cuda_bf16=True, probe=FASTER).precision == "bf16"
    assert decide("auto", device_type="cuda", cuda_bf16=True, probe=SLOWER).precision == "fp32"
    assert decide("auto", device_type="mps", probe=FASTER).precision == "fp32"


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert {"amx_bf16", "avx512_bf16"} <= read_cpu_flags(x86) and "bf16" in read_cpu_flags(arm)
    assert decide("auto", device_type="cpu", cpu_flags=read_cpu_flags(arm), probe=FASTER).native == "native Arm BF16"


def test_without_cpuinfo_the_flags_come_from_torchs_cpu_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert read_cpu_flags(tmp_path / "missing") == frozenset({"avx512_bf16"})


class FakeClock:
    """perf_counter for measure(): each step advances it by its precision's cost."""

    def __init__(self, cost_s: dict[str, list[float]]) -> None:
        self.now, self.cost_s, self.calls = 0.0, cost_s, {"fp32": 0, "bf16": 0}

    def __call__(self) -> float:
        return self.now

    def step(self, precision: str) -> None:
        costs = self.cost_s[precision]
        self.now += costs[min(self.calls[precision], len(costs) - 1)]
        self.calls[precision] += 1


def test_the_probe_keeps_each_precisions_fastest_interleaved_step() -> None:
    # warm-up, then one disturbed step each: the fastest of the rest are the undisturbed costs
    clock = FakeClock({"fp32": [0.5, 0.09, 0.012], "bf16": [0.9, 0.05, 0.006]})
    probe = measure(clock.step, clock=clock, max_rounds=10, budget_s=100)
    assert (probe.fp32_step_s, probe.bf16_step_s) == (pytest.approx(0.012), pytest.approx(0.006))
    assert probe.rounds == 10
    assert probe.speedup == pytest.approx(2.0) and probe.spread == pytest.approx(1.0)
    assert clock.calls == {"fp32": 11, "bf16": 11}  # one warm-up each
    assert probe.seconds == pytest.approx(clock.now)


def test_the_probe_stops_at_its_budget_after_its_minimum_rounds() -> None:
    clock = FakeClock({"fp32": [1.0], "bf16": [1.0]})
    probe = measure(clock.step, clock=clock, min_rounds=3, max_rounds=30, budget_s=0.5)
    assert probe.rounds == 3 and probe.seconds == pytest.approx(8.0)


def test_checkpoints_from_before_auto_report_their_train_config_precision() -> None:
    assert precision_record({"train_config": {"precision": "bf16"}})["used"] == "bf16"  # type: ignore[index]
    recorded = {"requested": "auto", "used": "fp32", "reason": "r", "native": None, "probe": None}
    assert precision_record({"precision": recorded, "train_config": {"precision": "fp32"}}) == recorded
    assert precision_record({}) is None


def test_vaeserve_train_defaults_to_auto_and_records_its_choice_through_export(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from training.checkpoint import load_checkpoint
    from vaeserve.cli import main

    run, artifacts = tmp_path / "run", tmp_path / "artifacts"
    with caplog.at_level(logging.INFO, logger="vaeserve.train"):
        assert main(["train", "--out", str(run), "--hidden", "128", "--latent-dim", "8", "--epochs", "1",
                     "--max-steps", "20", "--seed", "0"]) == 0
    _, payload = load_checkpoint(run / "best.pt")
    record = payload["precision"]
    assert record["requested"] == "auto" and record["used"] in ("fp32", "bf16")
    assert payload["train_config"]["precision"] == record["used"]  # what the run used, to rerun it exactly
    assert [r.getMessage() for r in caplog.records if "precision" in r.getMessage()] == [
        f"precision auto -> {record['used']}: {record['reason']}"]
    if record["native"] is not None:  # only native bf16 is worth probing; the probe is short
        assert record["probe"]["seconds"] < 2.0 and record["probe"]["rounds"] >= 3
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--iwae-k", "4", "--iwae-examples", "50"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["training_precision"] == record
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(artifacts)]) == 0
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["training"]["precision"] == record
    assert manifest["metrics"]["training_precision"] == record


def _direct_speedup(step, rounds: int = 15) -> float:  # type: ignore[no-untyped-def]
    """bf16's speedup over fp32 by a timing of its own: the median of interleaved steps (not the probe's
    fastest-of), after a warm-up of each."""
    import statistics
    import time

    for precision in ("fp32", "bf16", "fp32", "bf16"):
        step(precision)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(rounds):
        for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            start = time.perf_counter()
            step(precision)
            times[precision].append(time.perf_counter() - start)
    return statistics.median(times["fp32"]) / statistics.median(times["bf16"])


@pytest.mark.parametrize("hidden", [(64,), (1024, 1024)], ids=["small", "large"])
def test_auto_picks_what_a_direct_timing_on_this_machine_finds_faster(hidden: tuple[int, ...]) -> None:
    """On this machine, whatever its processor: auto's choice must agree with the test's own timing of
    both precisions, except inside a band around a tie where either answer is honest."""
    from dataclasses import replace as with_fields

    import torch

    from model.config import VAEConfig
    from model.vae import VAE
    from training.config import TrainConfig
    from training.loop import _loss
    from training.precision import resolve_precision

    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_sizes=hidden, latent_dim=16))
    cfg = TrainConfig(batch_size=128)
    x, eps = torch.rand(128, 784), torch.randn(128, 1, 16)

    def step(precision: str) -> None:
        loss, _, _ = _loss(model, x, eps, with_fields(cfg, precision=precision), 0, global_batch=128, world=1)
        loss.backward()

    decision = resolve_precision("auto", device=torch.device("cpu"), step=step)
    speedup = _direct_speedup(step)
    if decision.native is None:  # emulated bf16: auto never probes, and must not be leaving speed behind
        assert decision.precision == "fp32" and speedup < 1.15, (decision.reason, speedup)
    elif speedup > 1.15:
        assert decision.precision == "bf16" or "disturbed" in decision.reason, (decision.reason, speedup)
    elif speedup < 0.95:
        assert decision.precision == "fp32", (decision.reason, speedup)
    print(f"{hidden}: auto -> {decision.precision} ({decision.reason}); direct timing bf16/fp32 speedup {speedup:.2f}")
