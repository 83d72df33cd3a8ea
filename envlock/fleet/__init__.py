"""`envlock verify --distributed`: every rank verifies itself, the ranks compare fingerprints, rank 0 reports.

wire: the fixed-size fingerprint and verdict records; decide: the pure grouping and verdict (and FleetReport);
store: the exchange over torch.distributed's key-value store (the only module that touches torch.distributed);
run: verify_fleet / check_fleet, the entry points. This file imports none of them, so that the renderers can use
`decide` without loading the transport.
"""
