"""Stage 1: decode videos once and run frozen pretrained experts into Zarr stores (shared.store)."""
