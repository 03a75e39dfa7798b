"""Masked-token recovery: a BERT encoder (Devlin et al. 2018, arXiv:1810.04805) trained as a
masked language model on a character-level text corpus.

    L(θ) = −(1/|M|) Σ_{(b,t)∈M} log p_θ(x_{b,t} | x̃_b)          (nats per predicted char)

x̃ is the window with 15 % of its positions M chosen and corrupted 80/10/10 (sec. 3.1 of
1810.04805, `bert.mask_tokens`): [MASK], a random character, or unchanged. The vocabulary is the
training text's characters (`CharTokenizer`) plus one [MASK] id. Training windows are every
offset of the train split (`data.WindowSource`); the corruption is drawn on device from the
step's key, so every epoch sees fresh masks and a resumed run draws the same ones. Evaluation
reads `eval_windows` fixed, evenly spaced, non-overlapping validation windows corrupted once
with a fixed key, and reports over the predicted positions:

  validation_accuracy       arg-max = original character, all predicted positions
  validation_mask_accuracy  the same over the positions replaced by [MASK] only (the headline:
                            the model sees nothing of the character it recovers)
  validation_loss           mean cross-entropy, nats per predicted character
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments import data
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.lm import char_encode, eval_window_starts
from genfm.transformers import bert
from genfm.transformers.tokenizer import CharTokenizer

BERT_FIELDS = tuple(f.name for f in dataclasses.fields(bert.BertConfig) if f.name != "vocab_size")


class MaskedLMTask(Task):
  """`config.dataset` text → characters + [MASK] → Bert(`config.model`) → MLM cross-entropy."""

  def __init__(self, config):
    super().__init__(config)
    if config.dataset not in data.TEXT_NAMES:
      raise unknown_choice("config.dataset (a text corpus for the mlm task)", config.dataset,
                           data.TEXT_NAMES)
    self.mask_rate = config.get("mask_rate", 0.15)
    if not 0.0 < self.mask_rate <= 1.0:
      raise ConfigError(f"config.mask_rate must be in (0, 1], got {self.mask_rate}")
    train_text = data.load_text(config.dataset, "train")
    self.tokenizer = CharTokenizer.train(train_text)
    self.mask_id = self.tokenizer.vocab_size  # the one id after the characters
    self.model_config = self._bert_config(config, self.tokenizer.vocab_size + 1)
    T = self.model_config.max_len
    self.train_tokens = char_encode(self.tokenizer, train_text)  # [N_train]
    try:
      val_tokens = char_encode(self.tokenizer, data.load_text(config.dataset, "validation"))
    except ValueError as e:
      raise ConfigError(f"the validation text cannot be encoded: {e}") from None
    starts_W = eval_window_starts(len(val_tokens), T, config.get("eval_windows", 500))
    tokens_WT = val_tokens[starts_W[:, None] + np.arange(T)]
    # One fixed corruption of the validation windows (a key apart from the training keys).
    inputs_WT, _, weights_WT = jax.jit(lambda k, x: bert.mask_tokens(
        k, x, mask_id=self.mask_id, num_random=self.mask_id, mask_rate=self.mask_rate))(
            jax.random.key(config.seed + 10_007), jnp.asarray(tokens_WT))
    arrays = {"inputs": np.asarray(inputs_WT, np.int32), "targets": tokens_WT.astype(np.int32),
              "weights": np.asarray(weights_WT, np.float32)}
    self._eval = ArraySource(arrays, info_from_arrays(config.dataset, "validation", arrays))
    self.eval_predicted = float(arrays["weights"].sum())
    self.eval_masked = float((arrays["inputs"] == self.mask_id).sum())

  @staticmethod
  def _bert_config(config, vocab_size: int) -> bert.BertConfig:
    unknown = sorted(set(config.model.keys()) - set(BERT_FIELDS))
    if unknown:
      raise ConfigError(f"unknown key(s) {unknown} under config.model; valid: "
                        f"{', '.join(BERT_FIELDS)}")
    try:
      return bert.BertConfig(vocab_size=vocab_size, **config.model)
    except ValueError as e:
      raise ConfigError(f"config.model: {e}") from None

  def decode(self, ids) -> str:
    """Characters of `ids`, with [MASK] shown as '_'."""
    return "".join("_" if int(i) == self.mask_id else self.tokenizer.chars[int(i)]
                   for i in np.asarray(ids).reshape(-1))

  # -- Task contract --------------------------------------------------------------------------

  def train_source(self):
    return data.WindowSource(self.train_tokens, self.model_config.max_len)

  def eval_sources(self):
    return {"validation": self._eval}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return bert.Bert(self.model_config, rngs=rngs)

  def loss(self, model, batch: Batch, key: jax.Array):
    tokens_BT = batch["inputs"]
    inputs_BT, targets_BT, weights_BT = bert.mask_tokens(
        key, tokens_BT, mask_id=self.mask_id, num_random=self.mask_id, mask_rate=self.mask_rate)
    logits_BTV = model(inputs_BT)
    ce = bert.mlm_loss(logits_BTV, targets_BT, weights_BT)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    acc = jnp.sum(correct_BT * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)
    return ce, {"accuracy": acc}

  def eval_metrics(self, model, batch: Batch):
    inputs_BT = batch["inputs"]
    targets_BT = batch["targets"]
    logits_BTV = model(inputs_BT)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    w_BT = batch["weights"] * batch["mask"][:, None]
    m_BT = w_BT * (inputs_BT == self.mask_id)
    # The loop divides every sum by the total count (predicted positions); the [MASK]-only
    # accuracy is rescaled by predicted/masked over the fixed eval set to divide by its own.
    return {"loss": jnp.sum(ce_BT * w_BT), "accuracy": jnp.sum(correct_BT * w_BT),
            "mask_accuracy": jnp.sum(correct_BT * m_BT) * (self.eval_predicted / self.eval_masked),
            "count": jnp.sum(w_BT)}
