"""Character-level recurrent language model (Graves 2013, arXiv:1308.0850; Karpathy's char-rnn):
token embedding → a stack of LSTM (or GRU / tanh-RNN) layers → a linear read-out to V logits.

    L(θ) = −(1/(B·T)) Σ_{b,t} log p_θ(x_{b,t+1} | x_{b,≤t})      (nats per char)

Everything but the model is `LanguageModelTask`'s: the same tokenizer, training windows of
`context_len` characters, fixed validation windows and eval sums, so `validation_loss` is in the
same nats/char as the GPT's and the two compare directly. Each window starts from the zero carry
(the GPT also sees one window at a time); gradients flow back through all `context_len` steps.
The recurrence has no maximum length: `context_len` is only the window the task trains and
evaluates on. Samples (`after_eval`) run the prompt through the stack and then feed one sampled
character at a time back in, carrying the state (no cache needed: the carry is the whole past).
Dropout (Zaremba et al., arXiv:1409.2329) sits on the embedding, between layers and before the
read-out, never on the recurrent connections.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genfm.experiments.errors import ConfigError
from genfm.experiments.tasks.lm import LanguageModelTask
from genfm.foundations import rnn
from genfm.transformers import sampling


@dataclasses.dataclass(frozen=True)
class RNNLMConfig:
  vocab_size: int
  context_len: int = 64          # training / eval window (characters); the model has no limit
  cell: str = "lstm"             # lstm | gru | rnn
  num_layers: int = 2
  d_model: int = 220             # embedding width = hidden width D of every layer
  dropout: float = 0.0
  num_experts: int = 0           # always 0: lets LanguageModelTask's loss/eval run unchanged

  def __post_init__(self):
    if self.cell not in rnn.CELLS:
      raise ValueError(f"cell must be one of {', '.join(rnn.CELLS)}, got {self.cell!r}")
    for name in ("context_len", "num_layers", "d_model"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.num_experts:
      raise ValueError("the RNN LM has no experts; leave num_experts at 0")


RNN_FIELDS = tuple(f.name for f in dataclasses.fields(RNNLMConfig)
                   if f.name not in ("vocab_size", "num_experts"))


def param_count(cfg: RNNLMConfig) -> int:
  """V·D (embedding) + Σ_layers cell + D·V + V (read-out with bias)."""
  V, D = cfg.vocab_size, cfg.d_model
  return V * D + cfg.num_layers * rnn.num_params(cfg.cell, D, D) + D * V + V


class RNNLM(nnx.Module):
  """tokens [B, T] → logits [B, T, V]; `return_aux` mirrors `gpt.GPT` (aux is empty)."""

  def __init__(self, cfg: RNNLMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.rnn = rnn.StackedRNN(cfg.cell, cfg.d_model, cfg.d_model, cfg.num_layers,
                              dropout_rate=cfg.dropout, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, rngs=rngs)

  def run(self, tokens_BT: jax.Array, carries=None):
    """(per-layer final carries, logits [B, T, V] in fp32: the softmax reads them)."""
    finals, h_BTD = self.rnn(self.drop(self.embed(tokens_BT)), carries)
    return finals, self.head(self.drop(h_BTD)).astype(jnp.float32)

  def __call__(self, tokens_BT: jax.Array, *, return_aux: bool = False):
    logits_BTV = self.run(tokens_BT)[1]
    return (logits_BTV, {}) if return_aux else logits_BTV


def generate(model: RNNLM, prompt_BT: jax.Array, max_new_tokens: int, *, key: jax.Array,
             temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
  """prompt + `max_new_tokens` sampled tokens, int32 [B, T0 + max_new_tokens]; the carry holds
  the whole past, so each new token costs one cell step per layer."""
  carries, logits_BTV = model.run(prompt_BT)

  def step(state, key):
    carries, logits_BV = state
    tok_B = sampling.sample(logits_BV, key, temperature=temperature, top_k=top_k)
    carries, logits_B1V = model.run(tok_B[:, None], carries)
    return (carries, logits_B1V[:, 0]), tok_B

  _, new_NB = jax.lax.scan(step, (carries, logits_BTV[:, -1]),
                           jax.random.split(key, max_new_tokens))
  return jnp.concatenate([prompt_BT, new_NB.T.astype(prompt_BT.dtype)], axis=1)


class RNNLanguageModelTask(LanguageModelTask):
  """`LanguageModelTask` with `RNNLM(config.model)` in place of the GPT."""

  @staticmethod
  def _gpt_config(config, vocab_size: int) -> RNNLMConfig:
    unknown = sorted(set(config.model.keys()) - set(RNN_FIELDS))
    if unknown:
      raise ConfigError(f"unknown key(s) {unknown} under config.model for the lm_rnn task; "
                        f"valid: {', '.join(RNN_FIELDS)}")
    try:
      return RNNLMConfig(vocab_size=vocab_size, **config.model)
    except ValueError as e:
      raise ConfigError(f"config.model: {e}") from None

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return RNNLM(self.model_config, rngs=rngs)

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    extra = {"validation_chars_per_token": self.eval_chars / self.eval_tokens}
    n_new = self.config.get("sample_new_tokens", 0)
    if n_new <= 0:
      return extra
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, p, k: generate(
        nnx.merge(graphdef, s), p, n_new, key=k,
        temperature=self.config.get("sample_temperature", 0.8),
        top_k=self.config.get("sample_top_k", None)))
    tokens_BT = fn(state, jnp.asarray(self.prompt_BT), key)
    texts = [self.decode(row) for row in np.asarray(tokens_BT)]
    sep = "\n" + "-" * 40 + "\n"
    with open(os.path.join(workdir, f"samples_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, prompt {json.dumps(self.config.get('sample_prompt', ''))}, "
              f"{n_new} new tokens, {self.model_config.cell} carry{sep}" + sep.join(texts) + "\n")
    return extra
