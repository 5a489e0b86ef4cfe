"""PyTorch twins of ht_jax/model (the shape plan is shared: ht_jax/model/plan.py)."""
