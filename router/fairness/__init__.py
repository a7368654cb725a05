"""Fair sharing of a saturated fleet between tenants, pure (no Ray, no FastAPI, no clock: callers
pass `now`). The admission queue in front of placement (router/routing/placer.py) decides, per
request, in this order:

- tiers: which priority tier it runs in (`interactive` > `standard` > `batch`);
- cost: what it costs, in GPU-seconds of the GPU class that will serve it;
- vtc: each tenant's virtual counter of service within a tier (VTC, OSDI 2024), with the lift;
- fair_queue: the held requests in dispatch order (tier, then least-served tenant, then deadline);
- dispatch_rate: how fast the fleet has been taking work lately, in GPU-seconds per second;
- shedding: at arrival, admit / queue / refuse with 429 or 503 and a Retry-After from the queue.

See docs/fairness.md.
"""
