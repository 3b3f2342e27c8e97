"""Tooling around the product, not part of its API.

- `bench`: `hotmesh bench`, throughput and latency of an app on your database. It drives the
  engine only through the public SQL API (functions and views), like any user; it ships.
- `pgcluster`: `hotmesh db`, a private throwaway Postgres cluster (created and started as the
  `postgres` user when run as root) for `make` and the tests. It exists only in a source
  checkout: the wheel leaves it out (pyproject.toml), because an installed package has no
  business creating clusters (tests/test_packaging.py checks).
"""
