"""An MLP denoiser for low-dimensional (2-D toy) diffusion, in Flax NNX.

The time embedding is the sinusoidal one of the DDPM U-Net (arXiv:2006.11239, Appendix B)
followed by a two-layer MLP; class labels (index `num_classes` = null label, for
classifier-free guidance, arXiv:2207.12598) add a learned embedding to it. The trunk sees
[x, temb] concatenated and has SiLU hidden layers; the output layer is zero-initialised so the
untrained model predicts 0 (the mean of ε and of x₀ for centred data).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from genfm.diffusion import unet


@dataclasses.dataclass(frozen=True)
class MLPDenoiserConfig:
  data_dim: int = 2
  hidden: int = 128
  num_layers: int = 3          # hidden layers in the trunk
  temb_dim: int = 32
  num_classes: int | None = None


class MLPDenoiser(nnx.Module):
  """(x [B, D], t [B], labels [B] | None) → prediction [B, D]."""

  def __init__(self, cfg: MLPDenoiserConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.temb1 = nnx.Linear(cfg.temb_dim, cfg.hidden, rngs=rngs)
    self.temb2 = nnx.Linear(cfg.hidden, cfg.temb_dim, rngs=rngs)
    self.label_emb = (nnx.Embed(cfg.num_classes + 1, cfg.temb_dim, rngs=rngs)
                      if cfg.num_classes else None)
    dims = [cfg.data_dim + cfg.temb_dim] + [cfg.hidden] * cfg.num_layers
    self.trunk = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.out = nnx.Linear(cfg.hidden, cfg.data_dim,
                          kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, x_BD: jax.Array, t_B: jax.Array,
               labels_B: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    if x_BD.ndim != 2 or x_BD.shape[1] != cfg.data_dim:
      raise ValueError(f"MLPDenoiser expects x of shape [B, {cfg.data_dim}], got {x_BD.shape}.")
    if labels_B is not None and self.label_emb is None:
      raise ValueError("labels given to an unconditional MLPDenoiser (num_classes=None).")
    t_B = jnp.broadcast_to(t_B, x_BD.shape[:1])
    temb = self.temb2(jax.nn.silu(self.temb1(unet.timestep_embedding(t_B, cfg.temb_dim))))
    if self.label_emb is not None:
      if labels_B is None:   # no labels ⇒ the null label, i.e. the unconditional model
        labels_B = jnp.full(x_BD.shape[:1], cfg.num_classes, jnp.int32)
      temb = temb + self.label_emb(labels_B)
    h = jnp.concatenate([x_BD, temb], axis=-1)
    for layer in self.trunk:
      h = jax.nn.silu(layer(h))
    return self.out(h)
