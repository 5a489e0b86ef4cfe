"""Flax NNX modules of the HyperTransformer (see plan.py for the shapes)."""
