"""The infrastructure layer: one storage contract (base.py) and its backends."""
