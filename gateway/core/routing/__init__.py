"""Routing across backends: the decision core of a model's ``policy:`` (issue 11).

One idea per module, bottom up::

    config        the ``policy:`` union and the per-backend ``outlier`` / ``retry`` keys
    clock         the time source (monotonic now + sleep), replaced by a fake in tests
    decisions     why an attempt was made (spill, fallback, hedge, retry) and its sink
    outcomes      what an error means for routing: move on, count against a backend, stop
    latency       recent service times; the ``LatencyEstimate`` an overflow target offers
    queue_state   the ``QueueState`` spill-over reads from the primary's admission
    budget        retry and hedge budgets (Envoy's), backoff honouring Retry-After
    outlier       consecutive-failure ejection, the max-ejected guard, the fail-fast gate
    attempts      one attempt on its own context: its Server-Timing entries carry the reason
    route         the part of the ``Backend`` contract every route policy shares
    fallback, weighted, hedge, spillover    the route policies
    build         a route policy from its config, by ``kind``

Nothing here imports frontends, backends or wire types; nothing runs at import time.
"""
