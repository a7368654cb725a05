"""The fleet simulator, in parts (bench.fleet_sim re-exports the public names and runs the report):

- fleets: GPU pools, prices and the SLO a request is judged against.
- policies: routing policies over a simulated fleet (the router's own rule among them).
- simulator: one simulation in virtual time (`simulate`, `Result`).
- experiments: many simulations (in parallel processes): sweeps, policy comparisons, cheapest fleet.
- report: the plan, tables and plots of `python -m bench.fleet_sim [--quick]`.
"""
