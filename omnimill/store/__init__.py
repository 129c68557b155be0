"""Zarr stores: one base (identity, creation, lock, run history, unit markers, verify, repair) and the
label and token stores built on it. Nothing outside this package touches a store's Zarr groups."""
