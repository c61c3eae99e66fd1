"""``infergw plan``: a discrete-event simulator of the routing policies at cloud scale.

It answers "what SLO-violation rate and bill would each policy give on my traffic?"
without sending a request: arrivals from a trace, service and cold-start times from
distributions (measured or given), prices from the packaged price list. Pure Python and
numpy; imports nothing of the gateway, the backends or the deploy code.
"""
