"""PyTorch reference HyperTransformer: the same modules, names and maths as ht_jax."""
