"""Data: the paper's sequence layout, sources and mixtures."""
