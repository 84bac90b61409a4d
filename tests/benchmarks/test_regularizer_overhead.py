"""Step-time overhead of WRF and of its efficient variant, per method, measured side by side in one process.

``bench.overhead.measure_overhead`` interleaves the regularized and the plain step on the same batches after a
warm-up; the median ratio is the figure. Targets (issue: WRF): ``wrf`` <= 2.1x (one extra forward and backward
bounds it near 2x) and ``wrf-momentum`` <= 1.15x.
"""

import pytest

from bench.overhead import measure_overhead
from bench.train import RunConfig
from methods import list_methods

TARGETS = {"wrf": 2.1, "wrf-momentum": 1.15}


@pytest.mark.parametrize("reg", sorted(TARGETS))
@pytest.mark.parametrize("method", list_methods())
def test_step_time_ratio_against_the_plain_step(benchmark, small_world, method, reg):
    config = RunConfig(method=method, dataset="synth-cirr", data_root=str(small_world), pretrained="none", reg=reg)
    result = benchmark.pedantic(measure_overhead, args=(config,), kwargs={"steps": 12, "warmup": 3}, rounds=1)
    for key in ("ratio_median", "ratio_min", "ratio_max"):
        benchmark.extra_info[key] = result[key]
    print(
        f"\n{method} {reg}: {result['ratio_median']:.2f}x median "
        f"(min {result['ratio_min']:.2f}x, max {result['ratio_max']:.2f}x)"
    )
    assert result["ratio_median"] <= TARGETS[reg]
