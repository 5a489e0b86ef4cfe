"""HyperTransformer in JAX/Flax NNX."""
