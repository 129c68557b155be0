"""Shard formats (WebDataset), their verification, and the training loader. No models and no Zarr stores here."""
