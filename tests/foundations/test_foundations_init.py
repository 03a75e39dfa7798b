"""Initialisers have the stated variance; matched init keeps 20-layer activations in scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genfm.foundations import init

_LIBRARY = {
    "xavier_uniform": jax.nn.initializers.glorot_uniform(),
    "xavier_normal": jax.nn.initializers.glorot_normal(),  # truncated normal, same variance
    "he_normal": jax.nn.initializers.he_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
}


def test_variance_matches_formula_and_library():
  shape = (3, 3, 32, 64)  # conv kernel: fan_in = 288, fan_out = 576
  fan_in, fan_out = init.fans(shape)
  assert (fan_in, fan_out) == (288, 576)
  names = sorted(init.INITIALIZERS)
  samples = jax.jit(lambda: {n: (init.get_initializer(n)(jax.random.key(0), shape),
                                 _LIBRARY[n](jax.random.key(1), shape)) for n in names})()
  for name in names:
    ours, lib = samples[name]
    expected = 2.0 / (fan_in + fan_out) if name.startswith("xavier") else 2.0 / fan_in
    assert ours.shape == shape and ours.dtype == jnp.float32
    # 18k samples: the variance estimate has relative std ≈ √(2/N) ≈ 1%; allow 5%.
    np.testing.assert_allclose(jnp.var(ours), expected, rtol=0.05, err_msg=name)
    np.testing.assert_allclose(jnp.var(lib), expected, rtol=0.05, err_msg=name)
    np.testing.assert_allclose(jnp.mean(ours), 0.0, atol=3e-3, err_msg=name)
    if name.endswith("uniform"):
      limit = np.sqrt(3 * expected)
      assert float(jnp.max(jnp.abs(ours))) <= limit
      assert float(jnp.max(jnp.abs(ours))) > 0.99 * limit


@pytest.mark.parametrize("init_name, activation, regime", [
    ("he_normal", "relu", "stable"),
    ("xavier_normal", "linear", "stable"),
    ("xavier_normal", "relu", "collapse"),   # ×½ per layer
    ("he_normal", "linear", "explode"),      # ×2 per layer
])
def test_twenty_layer_activation_variance(init_name, activation, regime):
  # Width 1024: at finite width log Var[z_l] random-walks with per-layer variance ≈ 5/width
  # (ReLU), so width 256 can drift past a factor 2 by layer 20 even with the right init.
  var_L = jax.jit(init.activation_variances, static_argnums=(1, 2, 3, 4, 5))(
      jax.random.key(0), init_name, activation, 20, 1024, 64)
  ratio = np.asarray(var_L / var_L[0])
  if regime == "stable":
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
  elif regime == "collapse":
    np.testing.assert_allclose(ratio[-1], 0.5**19, rtol=0.5)
  else:
    np.testing.assert_allclose(ratio[-1], 2.0**19, rtol=0.5)


def test_bad_input():
  with pytest.raises(ValueError, match="valid choices: he_normal, he_uniform"):
    init.get_initializer("orthogonal")
  with pytest.raises(ValueError, match=r"\[D_in, D_out\]"):
    init.fans((5,))
