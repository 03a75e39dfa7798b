"""Editing with a trained ε-model: image-to-image (SDEdit) and inpainting / outpainting (RePaint).

SDEdit, Meng et al. 2021, arXiv:2108.01073 (Algorithm 1, VP form): perturb the input x to time
t₀ = strength of the diffusion, x(t₀) = √ᾱ(t₀) x + √(1 − ᾱ(t₀)) z, and solve the reverse process
from t₀ to 0. Here the reverse process is DDIM (arXiv:2010.02502, eq. 12; η = 0 deterministic,
η = 1 ancestral) on `samplers.timesteps`' sub-sequence, cut at the code index
t_s = round(strength · (T − 1)): the chain is t_s followed by every τ_i < t_s, so strength 1 runs
exactly the steps of `samplers.sample("ddim", ...)` and a lower strength runs fewer.
At strength 1 the start is the samplers' prior N(0, I) itself rather than q(x_T | x), which
differs from it by √ᾱ_T x (0.006 x on the linear schedule, T = 1000); so SDEdit(1) is sampling
from noise with the same key, bit for bit (as diffusers' img2img / inpaint pipelines do at
strength 1). Strength 0 returns the input unchanged (no step).

RePaint, Lugmayr et al. 2022, arXiv:2201.09865 (Algorithm 1): at every reverse step the known
pixels (mask 1) are replaced by the input noised to that step's level, the unknown ones (mask 0)
come from the model; then the merged x_{t−1} is noised back to x_t (`resample` times in all) so
the model can harmonise the two. The "jumps" of sec. 4.2 go back `jump` steps at once, as the
official `get_schedule_jump` does (resample = U jump_n_sample, jump = jump_length). Here the
steps are those of the respaced sub-sequence τ_1 < … < τ_S of `samplers.timesteps` (RePaint
samples 250 respaced steps of a T = 1000 model); a reverse step is DDIM's (η = 1: the respaced
DDPM posterior), a forward one q(x_{τ_{i+1}} | x_{τ_i}) = N(√(ᾱ_{i+1}/ᾱ_i) x, (1 − ᾱ_{i+1}/ᾱ_i) I).
The last step goes to ᾱ = 1, where the known pixels are the input exactly.

model_fn(x_t [B, ...], t [B] int32) → the prediction of `prediction_type` (samplers.py's form;
a guided model from `guidance.guided_model` or a ControlNet-controlled one fit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from genfm.diffusion import gaussian
from genfm.diffusion import samplers
from genfm.diffusion import schedules

Array = jax.Array


def _predict(model_fn: samplers.ModelFn, x: Array, t: Array) -> Array:
  pred = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
  if pred.shape != x.shape:
    raise ValueError(f"model_fn returned shape {pred.shape}, expected x_t's shape {x.shape}.")
  return pred


def _log_abar(sched: schedules.Schedule, ts: np.ndarray) -> jax.Array:
  """log ᾱ at code indices `ts`, with index −1 meaning ᾱ = 1 (clean data)."""
  table = jnp.concatenate([sched.log_alphas_cumprod, jnp.zeros((1,), jnp.float32)])
  return table[jnp.asarray(np.where(ts < 0, len(table) - 1, ts))]


def check_strength(strength: float) -> float:
  if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) \
      or not 0.0 <= float(strength) <= 1.0:
    raise ValueError(f"SDEdit strength must be a number in [0, 1] (the noise level t₀ as a "
                     f"fraction of T), got {strength!r}")
  return float(strength)


def sdedit_timesteps(sched: schedules.Schedule, num_steps: int, strength: float,
                     spacing: str = "uniform") -> np.ndarray:
  """Decreasing code indices of the SDEdit chain: t_s = round(strength · (T − 1)) then every
  τ_i < t_s of `samplers.timesteps(T, num_steps, spacing)` (empty at strength 0)."""
  strength = check_strength(strength)
  T = sched.num_timesteps
  seq = samplers.timesteps(T, num_steps, spacing, sched)
  if strength == 0.0:
    return np.zeros((0,), np.int32)
  t_start = int(round(strength * (T - 1)))
  return np.concatenate([[t_start], seq[seq < t_start][::-1]]).astype(np.int32)


def sdedit(model_fn: samplers.ModelFn, sched: schedules.Schedule, key: jax.Array,
           x0_BHWC: Array, strength: float, *, num_steps: int, eta: float = 0.0,
           spacing: str = "uniform", prediction_type: str = "eps",
           clip_x0: float | None = None) -> Array:
  """SDEdit (Algorithm 1 of 2108.01073, VP): x(t₀) from q(x_{t₀} | x0), then DDIM steps to 0.

  The key is used as `samplers.ddim_sample` uses it (the first split draws the start noise, the
  second is split once per step), so strength 1 equals `samplers.sample("ddim", model_fn, sched,
  key, x0.shape, num_steps=num_steps, eta=eta)`; strength 0 returns x0.
  """
  gaussian.check_prediction_type(prediction_type)
  ts = sdedit_timesteps(sched, num_steps, strength, spacing)
  if len(ts) == 0:
    return x0_BHWC
  init_key, key = jax.random.split(key)
  z = jax.random.normal(init_key, x0_BHWC.shape)
  lab = _log_abar(sched, ts)
  if float(strength) == 1.0:
    x = z                         # the prior N(0, I), as every sampler starts (module docstring)
  else:
    # x(t₀) = √ᾱ x0 + √(1 − ᾱ) z — eq. (4) of 2006.11239; 1 − ᾱ as −expm1(log ᾱ), exact near ᾱ ≈ 1
    x = jnp.exp(0.5 * lab[0]) * x0_BHWC + jnp.sqrt(-jnp.expm1(lab[0])) * z
  lab_prev = jnp.concatenate([lab[1:], jnp.zeros((1,), lab.dtype)])   # the last step to ᾱ = 1

  def step(x, inp):
    t, la, la_prev, k = inp
    mean, std = samplers.ddim_step_mean_std(x, _predict(model_fn, x, t), la, la_prev, eta,
                                            prediction_type, clip_x0)
    return mean + std * jax.random.normal(k, x.shape), None

  keys = jax.random.split(key, len(ts))
  x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), lab, lab_prev, keys))
  return x


def repaint_schedule(num_steps: int, resample: int = 1, jump: int = 1) -> np.ndarray:
  """Positions visited by RePaint, from S = num_steps down to 0 (position p ≥ 1 is τ_p, 0 is
  clean data): `get_schedule_jump` of the RePaint code (sec. 4.2 of 2201.09865). At every
  position p ∈ {j·jump + 1 : j·jump < S − jump} reached on the way down the chain goes back up
  `jump` positions, `resample − 1` times, then continues. resample = 1: no jumps."""
  for name, v in (("num_steps", num_steps), ("resample", resample), ("jump", jump)):
    if isinstance(v, bool) or int(v) != v or v < 1:
      raise ValueError(f"RePaint {name} must be an integer ≥ 1, got {v!r}")
  # the RePaint code's loop, on its indices i = p − 1 ∈ 0..S−1 with −1 = clean data
  jumps = {i: resample - 1 for i in range(0, num_steps - jump, jump)}
  i, out = num_steps, []
  while i >= 1:
    i -= 1
    out.append(i)
    if jumps.get(i, 0) > 0:
      jumps[i] -= 1
      for _ in range(jump):
        i += 1
        out.append(i)
  out.append(-1)
  out = np.asarray(out) + 1
  return np.asarray(out, np.int32)


def check_mask(known_BHWC: Array, mask_BHWC: Array) -> None:
  """A mask shaped like the image ([B, H, W, C], or [B, H, W, 1] for all channels) holding only
  0 and 1 (checked when concrete)."""
  want = tuple(known_BHWC.shape)
  if tuple(mask_BHWC.shape) not in (want, want[:-1] + (1,)):
    raise ValueError(f"inpainting mask has shape {tuple(mask_BHWC.shape)}; it must be the image's "
                     f"{want} (or {want[:-1] + (1,)} for all channels), 1 = known pixel")
  if not isinstance(mask_BHWC, jax.core.Tracer):
    m = np.asarray(mask_BHWC)
    if not np.all((m == 0) | (m == 1)):
      bad = m[(m != 0) & (m != 1)].ravel()[0]
      raise ValueError(f"inpainting mask must hold only 0 (generate) and 1 (keep), found {bad!r}")


def inpaint(model_fn: samplers.ModelFn, sched: schedules.Schedule, key: jax.Array,
            known_BHWC: Array, mask_BHWC: Array, *, num_steps: int, resample: int = 1,
            jump: int = 1, eta: float = 1.0, spacing: str = "uniform",
            prediction_type: str = "eps", clip_x0: float | None = None) -> Array:
  """RePaint (Algorithm 1 of 2201.09865, with the jumps of sec. 4.2): a sample that equals
  `known_BHWC` exactly where `mask_BHWC` = 1 and is generated where it is 0.

  Network evaluations: the number of reverse moves of `repaint_schedule` (num_steps with
  resample = 1; about resample × num_steps with jumps).
  """
  gaussian.check_prediction_type(prediction_type)
  check_mask(known_BHWC, mask_BHWC)
  seq = samplers.timesteps(sched.num_timesteps, num_steps, spacing, sched)
  pos = repaint_schedule(len(seq), resample, jump)
  t_of_pos = np.concatenate([[-1], seq]).astype(np.int32)      # position → code index (0 → −1)
  p_from, p_to = pos[:-1], pos[1:]
  t_from = t_of_pos[p_from]
  lab_from, lab_to = _log_abar(sched, t_from), _log_abar(sched, t_of_pos[p_to])
  down = jnp.asarray(p_to < p_from)
  keep = jnp.broadcast_to(mask_BHWC, known_BHWC.shape) > 0.5
  init_key, key = jax.random.split(key)
  x = jax.random.normal(init_key, known_BHWC.shape)            # x_T ~ N(0, I)

  def reverse(x, la, la_to, t, k):
    z_key, e_key = jax.random.split(k)
    mean, std = samplers.ddim_step_mean_std(x, _predict(model_fn, x, t), la, la_to, eta,
                                            prediction_type, clip_x0)
    unknown = mean + std * jax.random.normal(z_key, x.shape)
    # x^known_{t−1} = √ᾱ_{t−1} x0 + √(1 − ᾱ_{t−1}) ε — Algorithm 1, line 5 of 2201.09865
    known = (jnp.exp(0.5 * la_to) * known_BHWC
             + jnp.sqrt(-jnp.expm1(la_to)) * jax.random.normal(e_key, x.shape))
    # x_{t−1} = m ⊙ x^known + (1 − m) ⊙ x^unknown — line 8; `where` keeps the known pixels exact
    return jnp.where(keep, known, unknown)

  def forward(x, la, la_to, k):
    # x_t ~ N(√(ᾱ_t/ᾱ_{t−1}) x_{t−1}, (1 − ᾱ_t/ᾱ_{t−1}) I) — line 10 (respaced: one τ up)
    d = la_to - la
    return jnp.exp(0.5 * d) * x + jnp.sqrt(-jnp.expm1(d)) * jax.random.normal(k, x.shape)

  def step(x, inp):
    is_down, la, la_to, t, k = inp
    x = jax.lax.cond(is_down, lambda x: reverse(x, la, la_to, t, k),
                     lambda x: forward(x, la, la_to, k), x)
    return x, None

  keys = jax.random.split(key, len(p_from))
  x, _ = jax.lax.scan(step, x, (down, lab_from, lab_to, jnp.asarray(t_from), keys))
  return jnp.where(keep, known_BHWC, x)      # the final level is ᾱ = 1: known exactly (line 8)


def outpaint_mask(shape: tuple[int, ...], keep: int) -> np.ndarray:
  """[B, H, W, C] float32 mask with the central keep × keep square 1 (kept) and the border 0
  (generated): outpainting as inpainting of the border."""
  if len(shape) != 4:
    raise ValueError(f"outpaint_mask needs an image shape [B, H, W, C], got {shape}")
  _, H, W, _ = shape
  if isinstance(keep, bool) or int(keep) != keep or not 0 < keep <= min(H, W):
    raise ValueError(f"outpaint_mask keep must be an integer side in [1, {min(H, W)}], "
                     f"got {keep!r}")
  top, left = (H - keep) // 2, (W - keep) // 2
  m = np.zeros(shape, np.float32)
  m[:, top:top + keep, left:left + keep, :] = 1.0
  return m


def box_mask(shape: tuple[int, ...], top: int, left: int, height: int, width: int) -> np.ndarray:
  """[B, H, W, C] float32 mask that is 1 (known) everywhere but a height × width hole at
  (top, left), 0 there: the hole to inpaint."""
  if len(shape) != 4:
    raise ValueError(f"box_mask needs an image shape [B, H, W, C], got {shape}")
  _, H, W, _ = shape
  if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= H
          and left + width <= W):
    raise ValueError(f"box_mask hole {height}×{width} at ({top}, {left}) is not inside {H}×{W}")
  m = np.ones(shape, np.float32)
  m[:, top:top + height, left:left + width, :] = 0.0
  return m
