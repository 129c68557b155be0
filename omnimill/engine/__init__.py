"""Dask engine: cluster setup, work-unit planning, submission with back-pressure, retries, resume."""
