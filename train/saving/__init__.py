"""Saved state: the checkpoint manager (the one owner of what a run saves and loads), storage (the
whole save transaction, verified reads), and export (weights out, and back into a model). Imports
the engine and below."""
