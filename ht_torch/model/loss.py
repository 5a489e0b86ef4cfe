"""The training objective of one episode (twin of ht_jax/model/loss.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ht_torch.model.hypertransformer import HyperTransformer


def episode_loss(model: HyperTransformer, model_cfg, support_images, support_labels, query_images,
                 query_labels, generator=None, sample_mask=None):
  weights, _ = model.generate(support_images, support_labels, generator=generator, sample_mask=sample_mask)
  logits = model.classify(weights, query_images)
  labels = torch.as_tensor(query_labels).long()
  ce = F.cross_entropy(logits, labels, label_smoothing=float(model_cfg.label_smoothing))
  loss = ce
  if model_cfg.l2_reg_weight:
    loss = loss + model_cfg.l2_reg_weight * sum(w["kernel"].square().sum() for w in weights)
  if model_cfg.weight_variation_regularization:
    for layer, w in zip(model.cnn_layers, weights):
      if "generated_kernel" in w:
        loss = loss + model_cfg.weight_variation_regularization * (
            w["generated_kernel"].square().sum() / (1e-8 + layer.trainable_kernel.square().sum()))
  accuracy = (logits.argmax(-1) == labels).float().mean()
  return loss, {"loss": loss.detach(), "ce": ce.detach(), "accuracy": accuracy}
