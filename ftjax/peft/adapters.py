"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

An adapter is a small residual MLP inserted into each transformer layer of a frozen backbone:
h ← h + W_up · act(W_down · h), with a bottleneck of `adapter_size` features. W_up starts at zero, so at
initialisation the adapter is the identity and the model computes exactly what the backbone computes.

Placement (the model files call `bottleneck_adapter` at these points, on the sub-layer output before
its residual connection and LayerNorm):
- Houlsby: after the attention output projection and after the feed-forward output projection;
- Pfeiffer: after the feed-forward output projection only (half the parameters, similar accuracy).

The parameters live in the `adapter` collection at the path of the module that calls the adapter, named
after the site (`attention_down_kernel`, `ffn_up_bias`, ...): GPT-2's block hosts both Houlsby sites.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.peft.spec import PeftSpec


def bottleneck_adapter(module: nn.Module, h: jax.Array, spec: PeftSpec, site: str, matmul) -> jax.Array:
  """Applies the adapter at `site` ("attention" or "ffn") if `spec` places one there."""
  if spec.adapter is None or (spec.adapter == "pfeiffer" and site != "ffn"):
    return h
  features = h.shape[-1]
  # One module may host both sites (GPT-2's block does), so the site is part of each variable's name.
  name = lambda leaf: f"{site}_{leaf}"
  down = module.variable(
    "adapter",
    name("down_kernel"),
    lambda: nn.initializers.normal(1e-2)(module.make_rng("params"), (features, spec.adapter_size)),
  ).value
  down_bias = module.variable("adapter", name("down_bias"), lambda: jnp.zeros((spec.adapter_size,))).value
  up = module.variable("adapter", name("up_kernel"), lambda: jnp.zeros((spec.adapter_size, features))).value
  up_bias = module.variable("adapter", name("up_bias"), lambda: jnp.zeros((features,))).value
  z = jax.nn.gelu(matmul(h, down) + down_bias, approximate=False)
  return h + (matmul(z, up) + up_bias).astype(h.dtype)
