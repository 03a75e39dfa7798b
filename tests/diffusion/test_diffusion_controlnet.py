"""ControlNet (2302.05543): parameter count by hand formula, the controlled model equal to the
locked one bit for bit at init, only the zero convs receiving gradient at init, control changing
the output after an update, the copy initialised from the base encoder, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genfm.diffusion import controlnet as cn
from genfm.diffusion.unet import UNet, UNetConfig

CFG = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 num_groups=4, num_classes=10, image_size=8)


def conv(k, a, b):
  return k * k * a * b + b


def resblock(a, b, temb):
  return (2 * a + conv(3, a, b) + temb * b + b + 2 * b + conv(3, b, b)
          + (conv(1, a, b) if a != b else 0))


def attn(c):
  return 2 * c + c * 3 * c + 3 * c + c * c + c


def encoder_half(cfg):
  """temb MLP + label table + conv_in + the down path + the middle block, by hand."""
  ch, temb = cfg.base_channels, 4 * cfg.base_channels
  n = ch * temb + temb + temb * temb + temb + (cfg.num_classes + 1) * temb
  n += conv(3, cfg.image_channels, ch)
  c, res = ch, cfg.image_size
  for level, mult in enumerate(cfg.channel_mults):
    for _ in range(cfg.num_res_blocks):
      n += resblock(c, mult * ch, temb) + (attn(mult * ch) if res in cfg.attn_resolutions else 0)
      c = mult * ch
    if level != len(cfg.channel_mults) - 1:
      n += conv(3, c, c)
      res //= 2
  return n + 2 * resblock(c, c, temb) + attn(c)


def skip_channels(cfg):
  ch, out = cfg.base_channels, [cfg.base_channels]
  for level, mult in enumerate(cfg.channel_mults):
    out += [mult * ch] * cfg.num_res_blocks
    if level != len(cfg.channel_mults) - 1:
      out.append(mult * ch)
  return out


def n_params(module):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("cfg,widths,factor", [
    (CFG, (16, 32), 1),
    (UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attn_resolutions=(), num_groups=8,
                num_classes=10, image_size=32, image_channels=4), (8,), 4),
])
def test_parameter_count_is_encoder_half_plus_hint_encoder_plus_zero_convs(cfg, widths, factor):
  model = jax.eval_shape(lambda: cn.ControlNet(cfg, hint_channels=1, hint_widths=widths,
                                               hint_factor=factor, rngs=nnx.Rngs(0)))
  hint, c = 0, 1
  for w in widths:
    hint, c = hint + conv(3, c, w), w
  hint += int(np.log2(factor)) * conv(3, c, c) + conv(3, c, cfg.base_channels)
  skips = skip_channels(cfg)
  mid = cfg.base_channels * cfg.channel_mults[-1]
  zeros = sum(conv(1, s, s) for s in skips) + conv(1, mid, mid)
  assert n_params(model.copy) == encoder_half(cfg)
  assert n_params(model.hint) == hint
  assert n_params(model) == encoder_half(cfg) + hint + zeros
  assert tuple(model.copy.skip_channels) == tuple(skips)


def _perturbed(module, seed, scale=0.1):
  """Every parameter (zero-initialised ones too) moved by Gaussian noise (drawn on the host:
  cheaper than a compiled or op-by-op init on a shared CPU)."""
  rng = np.random.default_rng(seed)
  state = nnx.state(module, nnx.Param)
  nnx.update(module, jax.tree.map(
      lambda p: p + jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), state))


def _random_unet(cfg, seed):
  """A U-Net with random "trained" weights (its output conv nonzero), built from its abstract
  shapes: an eager initialisation costs ~20 s of CPU in per-shape compiles, this ~1 s."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":                                   # GroupNorm γ near 1
      return jnp.asarray(1.0 + 0.1 * rng.normal(size=x.shape), x.dtype)
    fan_in = int(np.prod(x.shape[:-1])) if name == "kernel" else 1
    std = 1.0 / np.sqrt(fan_in) if name in ("kernel", "embedding") else 0.1
    return jnp.asarray(std * rng.normal(size=x.shape), x.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="module")
def nets():
  unet = _random_unet(CFG, 1)               # a "trained" base: its output conv is not zero
  control = cn.ControlNet(CFG, rngs=nnx.Rngs(2))      # the module's own init (zero convs)
  cn.init_copy_from(control, unet)
  return unet, control


def _inputs(b=4):
  x = jax.random.normal(jax.random.key(3), (b, 8, 8, 1))
  t = jnp.array([0, 250, 500, 999])[:b]
  labels = jnp.array([0, 3, 9, 10])[:b]                  # 10 = the null label
  hint = (jax.random.uniform(jax.random.key(4), (b, 8, 8, 1)) < 0.3).astype(jnp.float32)
  return x, t, labels, hint


@nnx.jit
def _everything(unet, control):
  """One compiled function for every check below (a U-Net compile is the cost of this file):
  the base, the controlled model for this hint, another hint and strength 0, the gradient of
  a loss with respect to the ControlNet, and the base's and the copy's encoder outputs."""
  x, t, labels, hint = _inputs()
  grads = nnx.grad(lambda c: jnp.sum(cn.controlled(unet, c, x, t, labels, hint) ** 2))(control)
  return {"base": unet(x, t, labels), "ctrl": cn.controlled(unet, control, x, t, labels, hint),
          "other": cn.controlled(unet, control, x, t, labels, jnp.roll(hint, 1, axis=0)),
          "off": cn.controlled(unet, control, x, t, labels, hint, strength=0.0),
          "grads": nnx.to_pure_dict(grads), "enc_base": unet.encode(x, t, labels),
          "enc_copy": control.copy.encode(x, t, labels)}


@pytest.fixture(scope="module")
def fresh(nets):
  return _everything(*nets)


@pytest.fixture(scope="module")
def updated(nets):
  unet, control = nets
  control = nnx.clone(control)
  _perturbed(control, 5, scale=0.05)              # a nonzero update of every ControlNet weight
  return _everything(unet, control)


def test_fresh_controlnet_leaves_the_base_output_unchanged_bit_for_bit(fresh):
  assert float(jnp.abs(fresh["base"]).max()) > 0.1       # the check is not 0 == 0
  np.testing.assert_array_equal(fresh["ctrl"], fresh["base"])
  np.testing.assert_array_equal(fresh["other"], fresh["base"])


def test_init_copy_from_copies_the_encoder(fresh):
  (h_b, hs_b, temb_b), (h_c, hs_c, temb_c) = fresh["enc_base"], fresh["enc_copy"]
  np.testing.assert_array_equal(h_c, h_b)
  np.testing.assert_array_equal(temb_c, temb_b)
  assert len(hs_c) == len(hs_b)
  for a, b in zip(hs_c, hs_b):
    np.testing.assert_array_equal(a, b)


def test_at_init_only_the_zero_convs_get_gradient(fresh):
  g = fresh["grads"]
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(tree)))
  # eq. (2): ∂y/∂Θ_z2 ≠ 0 (its input is the copy's nonzero features), but the copy and the hint
  # encoder sit behind zero convs (Z = 0 ⇒ ∂y/∂Θ_c = 0) — sec. 3.1 of 2302.05543
  assert norm(g["zero_convs"]) > 0 and norm(g["zero_mid"]) > 0
  assert norm(g["copy"]) == 0.0 and norm(g["hint"]) == 0.0


def test_after_an_update_the_control_changes_the_output(updated):
  assert float(jnp.abs(updated["ctrl"] - updated["base"]).mean()) > 1e-3
  assert float(jnp.abs(updated["ctrl"] - updated["other"]).mean()) > 1e-4   # the hint matters
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(tree)))
  assert norm(updated["grads"]["copy"]) > 0 and norm(updated["grads"]["hint"]) > 0
  np.testing.assert_array_equal(updated["off"], updated["base"])   # strength 0: the base exactly


def test_bad_input_one_line(nets):
  unet, control = nets
  x, t, labels, hint = _inputs(1)
  other = UNetConfig(**{**CFG.__dict__, "base_channels": 16})
  foreign = jax.eval_shape(lambda: cn.ControlNet(other, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"built for another base U-Net .*base_channels: 16 vs 8"):
    cn.controlled(unet, foreign, x, t, labels, hint)
  with pytest.raises(ValueError, match="built for another base"):
    cn.init_copy_from(foreign, unet)
  with pytest.raises(ValueError, match=r"hint has shape \(1, 4, 4, 1\).*must be \(1, 8, 8, 1\)"):
    control(x, t, labels, hint[:, :4, :4])
  with pytest.raises(ValueError, match="power of 2"):
    cn.ControlNet(CFG, hint_factor=3, rngs=nnx.Rngs(0))
