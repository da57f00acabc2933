"""Checkpoint I/O (orbax) and importers of pretrained weights."""
