"""Experiments that drive the local stack with the load generator (``bench hybrid``)."""
