"""The training objective of one episode: query cross-entropy plus the original's regularisers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ht_jax.model.hypertransformer import HyperTransformer


def episode_loss(model: HyperTransformer, model_cfg, support_images, support_labels, query_images,
                 query_labels, key=None, sample_mask=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  weights, _ = model.generate(support_images, support_labels, key=key, sample_mask=sample_mask)
  logits = model.classify(weights, query_images)
  num_labels = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(query_labels, num_labels), model_cfg.label_smoothing)
  ce = optax.softmax_cross_entropy(logits, targets).mean()
  loss = ce
  if model_cfg.l2_reg_weight:        # Keras L2 on every CNN kernel, generated ones included
    loss += model_cfg.l2_reg_weight * sum(jnp.sum(jnp.square(w["kernel"])) for w in weights)
  if model_cfg.weight_variation_regularization:
    for layer, w in zip(model.cnn_layers, weights):
      if "generated_kernel" in w:
        learned = layer.trainable_kernel[...]
        loss += model_cfg.weight_variation_regularization * (
            jnp.sum(jnp.square(w["generated_kernel"])) / (1e-8 + jnp.sum(jnp.square(learned))))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == query_labels)
  return loss, {"loss": loss, "ce": ce, "accuracy": accuracy}
