"""Fleet simulator: routing policies over heterogeneous GPU pools, in virtual time.

    .venv/bin/python -m bench.fleet_sim [--quick] [--workers N]

The simulator lives in bench/sim/ (fleets, policies, simulator, experiments, report); this module
keeps the names other tools import (`simulate`, `mixed_fleet`, `SLO`, `Result`, ...) and runs the
report. Writes bench/results/fleet_sim.json and PNG plots next to it. --quick is a smoke run
(2-minute windows, small sweeps): too short for steady state, do not quote its figures.
"""

from __future__ import annotations

from bench.sim.experiments import (
    Run,
    cached_jobs,
    cheapest_fleet,
    compare_policies,
    fleets_by_share,
    fleets_by_size,
    run_all,
    sweep,
)
from bench.sim.fleets import (
    H100_USD_PER_GPU_HOUR,
    L40S_USD_PER_GPU_HOUR,
    LONG_SPILL_PER_REPLICA,
    SHORT_SPILL_PER_REPLICA,
    SLO,
    PoolSpec,
    fleet_label,
    fleet_usd_per_hour,
    long_pool,
    mixed_fleet,
    short_pool,
)
from bench.sim.policies import POLICIES, make_policy
from bench.sim.report import FULL, QUICK, Plan, main
from bench.sim.simulator import Result, build_fleet, simulate

__all__ = [
    "FULL", "H100_USD_PER_GPU_HOUR", "L40S_USD_PER_GPU_HOUR", "LONG_SPILL_PER_REPLICA", "POLICIES", "QUICK",
    "SHORT_SPILL_PER_REPLICA", "SLO", "Plan", "PoolSpec", "Result", "Run",
    "build_fleet", "cached_jobs", "cheapest_fleet", "compare_policies", "fleet_label", "fleet_usd_per_hour",
    "fleets_by_share", "fleets_by_size", "long_pool", "main", "make_policy", "mixed_fleet", "run_all",
    "short_pool", "simulate", "sweep",
]

if __name__ == "__main__":
    main()
