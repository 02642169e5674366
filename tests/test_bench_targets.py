"""benchmarks.run: the CPU budget and the targets it qualifies, on made-up measurements."""

from __future__ import annotations

import pytest

from benchmarks.inprocess import InferencePoint, InferenceSetup
from benchmarks.run import (
    TARGET_CONCURRENCY,
    CpuBudget,
    ModelResult,
    PeerRow,
    Point,
    check_targets,
)

C = TARGET_CONCURRENCY


def point(server: str, pairs_per_s: float, server_cpu_ms: float, client_cpu_us: float) -> Point:
    return Point(
        server, "-", C, pairs_per_s, 1.0, 2.0, 3.0, 0, 100.0, server_cpu_ms, client_cpu_us, {}, {}
    )


def result(name: str, floor_pairs_per_s: float, service_pairs_per_s: float) -> ModelResult:
    r = ModelResult(name, "card", "corpus")
    r.points = [
        point("floor", floor_pairs_per_s, server_cpu_ms=0.3, client_cpu_us=200),
        point("service", service_pairs_per_s, server_cpu_ms=2.0, client_cpu_us=100),
    ]
    fast = InferencePoint(InferenceSetup(1, 2), 64, images_per_s=9000, cpu_ms_per_image=0.3)
    lean = InferencePoint(InferenceSetup(1), 64, images_per_s=4000, cpu_ms_per_image=0.25)
    r.ceiling = [fast, lean]
    return r


def test_the_budget_charges_the_cheapest_inference_the_floor_and_the_client_to_the_cores():
    r = result("mnist", 3000, 500)
    assert r.best_ceiling().images_per_s == 9000  # the fastest cell is not the cheapest
    budget = CpuBudget.of(r, cores=2)
    assert (budget.inference_ms, budget.http_ms, budget.client_ms) == (0.5, 0.3, 0.2)
    assert budget.pairs_per_s == pytest.approx(2000)  # 2 cores x 1000 ms / 1.0 ms per pair
    assert CpuBudget.of(r, cores=4).pairs_per_s == pytest.approx(4000)


def test_no_budget_without_a_floor_or_a_ceiling():
    r = result("mnist", 3000, 500)
    r.points = [p for p in r.points if p.server != "floor"]
    assert CpuBudget.of(r, cores=2) is None
    assert CpuBudget.of(ModelResult("m", "card", "corpus"), cores=2) is None


@pytest.mark.parametrize(("service", "verdict"), [(1100, "FAIL"), (1200, "PASS")])
def test_mnist_is_held_to_60_percent_of_the_cpu_budget_not_the_floor(service, verdict):
    r = result("mnist", 3000, service)
    check_targets(r, cores=2)  # budget 2000 pairs/s
    checks = {target: (v, detail) for v, target, detail in r.checks}
    got, detail = checks[f"c={C}: >= 60% of the CPU budget"]
    assert (
        got == verdict and detail == f"{service / 2000:.0%}: {service} pairs/s, service (-), alone"
    )
    assert checks[f"c={C}: share of the HTTP floor"][0] == "INFO"  # issue 18 dropped its target
    assert not any("80% of the HTTP floor" in t for t in checks)
    assert checks[f"c={C}: share of the CPU budget"][1].endswith(f"= {service / 2000:.0%}")


def test_mnist_budget_target_takes_the_best_service_configuration_and_names_it():
    r = result("mnist", 3000, 800)  # one process alone: 40% of the 2000 pairs/s budget
    r.peer = [
        PeerRow("service", "torchscript", 3, 2.0, 4.0, 900, 90, 2.0, 700, 0, None),
        PeerRow(
            "service", "engine auto: torchscript", 3, 2.0, 4.0, 1300, 80, 2.0, 1400, 0, None, 2
        ),
        PeerRow("TorchServe", "2 workers", 3, 3.0, 6.0, 1500, 50, 2.0, 900, 0, None),  # not ours
    ]
    check_targets(r, cores=2)
    checks = {target: (v, detail) for v, target, detail in r.checks}
    got, detail = checks[f"c={C}: >= 60% of the CPU budget"]
    assert got == "PASS"
    assert (
        detail == "65%: 1300 pairs/s, service, 2 workers (engine auto: torchscript), side by side"
    )
    # The one-process run's own share stays as information.
    assert checks[f"c={C}: share of the CPU budget"][1].endswith("= 40%")
