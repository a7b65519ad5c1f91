"""Command modules, one per stage; each exposes ``register(app)``."""
