"""Instruction tuning of a pretrained GPT, fully or parameter-efficiently (`config.peft.method`).

The base is a `lm` run (`config.init_from`, e.g. `shakespeare_char`); its tokenizer and model
shape come from the same keys (`corpus`, `tokenizer`, `model`). The data are the offline
instruction tasks of `experiments/data/instructions.py` (addition, reversing / uppercasing a
corpus word, counting a letter, ISO dates), trained with the response-only SFT loss
(`transformers/sft.py`; packed rows with segment ids when `config.pack`).

Methods (`config.peft.method`), each training only its own parameter type:
    full     every parameter (nnx.Param)
    lora     LoRA on `peft.targets` (2106.09685; nnx.LoRAParam), rank `peft.rank`, α `peft.alpha`
    qlora    the same on an NF4 base (2305.14314), `peft.compute_dtype`
    adapter  Houlsby bottlenecks of size `peft.adapter_size` (1902.00751; AdapterParam)
    prefix   per-layer key/value prefixes of `peft.length` (2101.00190; PrefixParam)
    prompt   a soft prompt of `peft.length` embeddings (2104.08691; PromptParam)
Prefix and prompt start from the base's activations / embeddings of `peft.init_text`
(computed from the init_from source itself, in `convert_source`).

Evaluation: `test_loss` (response nats/token on held-out items), exact match by greedy decoding
on `num_eval` test items and `num_eval` held-out-template items (`test_exact_match`,
`heldout_exact_match`, and per task), and forgetting: `corpus_loss`, nats/token of the
pretraining corpus' validation split in `forget_windows` windows of `forget_len` tokens (the
same windows for every method). Answers go to `workdir/answers_step{N}.txt`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from genfm.experiments.data import instructions
from genfm.experiments.data.sources import ArraySource, info_from_arrays
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.models import config_trainable, path_str
from genfm.experiments.tasks.base import Batch, Task
from genfm.experiments.tasks.lm import LanguageModelTask, eval_window_starts
from genfm.transformers import (adapters, gpt, lora, prefix_tuning, prompt_tuning, qlora,
                                sft)

METHODS = ("full", "lora", "qlora", "adapter", "prefix", "prompt")
PARAM_TYPES = {"full": nnx.Param, "lora": nnx.LoRAParam, "qlora": nnx.LoRAParam,
               "adapter": adapters.AdapterParam, "prefix": prefix_tuning.PrefixParam,
               "prompt": prompt_tuning.PromptParam}
NEW_TYPES = nnx.Any(*{t for m, t in PARAM_TYPES.items() if m != "full"})


class SFTTask(Task):
  """Prompt/response pairs → response-only cross-entropy on a (P)EFT-adapted GPT."""

  def __init__(self, config):
    super().__init__(config)
    p = config.peft
    if p.method not in METHODS:
      raise unknown_choice("config.peft.method", p.method, METHODS)
    self.method = p.method
    if self.method == "prompt" and config.pack:
      raise ConfigError("config.pack=True cannot be used with peft.method='prompt': every "
                        "example needs its own copy of the soft prompt; set --config.pack=False")
    lm_cfg = ml_collections.ConfigDict(config.to_dict())
    lm_cfg.dataset, lm_cfg.sample_new_tokens = config.corpus, 0
    lm_cfg.eval_windows = 1
    self.lm = LanguageModelTask(lm_cfg)    # the base's tokenizer, model shape and corpus
    self.model_config = self.lm.model_config
    virtual = p.length if self.method in ("prefix", "prompt") else 0
    self.max_len = self.model_config.context_len - virtual  # positions left for real tokens
    if self.max_len < 2:
      raise ConfigError(f"config.peft.length={p.length} leaves no room in context_len="
                        f"{self.model_config.context_len}")
    self.init_tokens = self._encode_text(p.get("init_text", ""), virtual) if virtual else None
    tasks = tuple(config.instruction_tasks)
    train = instructions.cached(tasks, "train", config.num_train_examples, seed=config.seed)
    rows = [self._encode(ex) for ex in train]
    self._train = (sft.pack if config.pack else sft.pad_rows)(rows, self.max_len)
    self._eval_examples = {s: instructions.mixture(tasks, s, config.num_eval, seed=config.seed)
                           for s in ("test", "heldout")}
    longest = max(len(self.lm.encode(ex.prompt)) for v in self._eval_examples.values()
                  for ex in v)
    if longest + config.answer_tokens > self.max_len:   # checked now, not at the first eval
      raise ConfigError(
          f"the longest evaluation prompt ({longest} tokens) + config.answer_tokens="
          f"{config.answer_tokens} needs {longest + config.answer_tokens} positions, but "
          f"{self.max_len} are left (context_len {self.model_config.context_len} minus "
          f"peft.length={virtual} virtual tokens); lower peft.length or answer_tokens")
    self._test_rows = sft.pad_rows([self._encode(ex) for ex in self._eval_examples["test"]],
                                   self.max_len)
    n, T = config.forget_windows, config.forget_len
    if T > self.max_len:
      raise ConfigError(f"config.forget_len={T} > the {self.max_len} positions left for tokens")
    val = self.lm.val_tokens
    starts = eval_window_starts(len(val), T, n)
    idx = starts[:, None] + np.arange(T + 1)[None]
    chunk = val[idx]                                     # [n, T + 1]
    ones = np.ones((len(starts), T), np.int32)
    self._corpus_rows = {"inputs": chunk[:, :-1], "targets": chunk[:, 1:], "loss_mask": ones,
                         "positions": np.broadcast_to(np.arange(T), (len(starts), T)).copy(),
                         "segment_ids": ones}
    self._built: dict[str, nnx.Module] = {}

  # -- data ------------------------------------------------------------------------------------

  def _encode_text(self, text: str, length: int) -> np.ndarray:
    """`length` tokens of `text` (repeated or cut) for a prefix / prompt init."""
    if not text:
      raise ConfigError(f"config.peft.init_text must be a non-empty string for "
                        f"peft.method={self.method!r}")
    try:
      ids = self.lm.encode(text)
    except ValueError as e:
      raise ConfigError(f"config.peft.init_text cannot be encoded: {e}") from None
    return np.resize(ids, length).astype(np.int32)

  def _encode(self, ex: instructions.Example) -> dict[str, np.ndarray]:
    try:
      return sft.encode_example(self.lm.encode(ex.prompt), self.lm.encode(ex.response),
                                self.max_len)
    except ValueError as e:
      virtual = self.model_config.context_len - self.max_len
      room = (f" (context_len {self.model_config.context_len} minus the {virtual} virtual tokens "
              "of peft.length)" if virtual else "")
      raise ConfigError(f"instruction example {ex.prompt!r}: {e}{room}") from None

  def train_source(self):
    return ArraySource(self._train, info_from_arrays("instructions", "train", self._train))

  def eval_sources(self):
    return {"test": ArraySource(self._test_rows,
                                info_from_arrays("instructions", "test", self._test_rows)),
            "corpus": ArraySource(self._corpus_rows,
                                  info_from_arrays(self.config.corpus, "validation",
                                                   self._corpus_rows))}

  # -- models ----------------------------------------------------------------------------------

  def build_models(self, rngs: nnx.Rngs):
    m = gpt.GPT(self.model_config, rngs=rngs)
    p = self.config.peft
    try:
      if self.method == "lora":
        lora.apply_lora(m, p.targets, p.rank, p.alpha, rslora=p.rslora, rngs=rngs)
      elif self.method == "qlora":
        qlora.apply_qlora(m, p.targets, p.rank, p.alpha, rslora=p.rslora,
                          block_size=p.block_size, double_quant=p.double_quant,
                          compute_dtype=p.compute_dtype, rngs=rngs)
      elif self.method == "adapter":
        adapters.apply_adapters(m, p.adapter_size, p.adapter_targets, rngs=rngs)
      elif self.method == "prefix":
        prefix_tuning.add_prefix(m, p.length, init_tokens=self.init_tokens, reparam=p.reparam,
                                 reparam_dim=p.reparam_dim, reparam_hidden=p.reparam_hidden,
                                 rngs=rngs)
      elif self.method == "prompt":
        prompt_tuning.add_soft_prompt(m, p.length, init_tokens=self.init_tokens, rngs=rngs)
    except ValueError as e:
      raise ConfigError(f"config.peft: {e}") from None
    self._built["model"] = m
    return {"model": m}

  def trainable(self, name: str):
    return config_trainable(self.config) if self.method == "full" else PARAM_TYPES[self.method]

  def new_parameters(self, name: str):
    del name
    return NEW_TYPES

  def convert_source(self, name: str, arrays: dict) -> dict:
    """QLoRA: the source's fp32 kernels → NF4 storage. Prefix / prompt: their init from the
    *source's* weights (the base's activations / embeddings of `peft.init_text`)."""
    model = self._built[name]
    if self.method == "qlora":
      return qlora.quantize_arrays(model, arrays)
    if self.method not in ("prefix", "prompt"):
      return arrays
    base = gpt.GPT(self.model_config, rngs=nnx.Rngs(0))
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(base, nnx.Param)):
      if path_str(path) not in arrays:
        raise ValueError(f"the source lacks {path_str(path)}; it must be a {self.config.corpus} "
                         "GPT of this model shape")
      flat.append((path, var.replace(jnp.asarray(arrays[path_str(path)]))))
    nnx.update(base, nnx.from_flat_state(flat))
    p = self.config.peft
    if self.method == "prompt":
      sp = prompt_tuning.add_soft_prompt(base, p.length, init_tokens=self.init_tokens)
      return {**arrays, "soft_prompt/embedding": np.asarray(sp.embedding[...])}
    init = prefix_tuning.token_activations(base, jnp.asarray(self.init_tokens))
    # The other reparametrisation parameters (P', the MLP) stay fresh: they are new parameters.
    key = "prefix/b2" if p.reparam else "prefix/kv"
    value = (jnp.einsum("LCPKH->PLCKH", init).reshape(p.length, -1) if p.reparam else init)
    return {**arrays, key: np.asarray(value)}

  # -- loss and metrics --------------------------------------------------------------------------

  def _logits(self, model, batch: Batch):
    seg = None if self.method == "prompt" else batch["segment_ids"]
    return model(batch["inputs"], positions_BT=batch["positions"], segment_ids_BT=seg)

  def loss(self, model, batch: Batch, key: jax.Array):
    del key
    loss = sft.sft_loss(self._logits(model, batch), batch["targets"], batch["loss_mask"])
    return loss, {"response_tokens": jnp.sum(batch["loss_mask"]).astype(jnp.float32)}

  def eval_metrics(self, model, batch: Batch):
    logits = self._logits(model, batch)
    s, c = sft.per_example_losses(logits, batch["targets"], batch["loss_mask"],
                                  batch["segment_ids"], 1)
    w = batch["mask"].astype(jnp.float32)   # padded rows of the last batch
    return {"loss": jnp.sum(s[:, 0] * w), "count": jnp.sum(c[:, 0] * w)}

  def answers(self, model, split: str) -> list[tuple[instructions.Example, str]]:
    """(example, generated text) for the split's evaluation examples, greedy."""
    exs = self._eval_examples[split]
    prompts = [self.lm.encode(ex.prompt) for ex in exs]
    n_new = self.config.answer_tokens
    out = []
    for i in range(0, len(exs), 256):
      gen = sft.complete(model, prompts[i:i + 256], n_new)
      out += [(ex, self.lm.decode(g)) for ex, g in zip(exs[i:i + 256], gen)]
    return out

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    metrics, lines = {}, []
    self.last_answers = {}
    for split in ("test", "heldout"):
      got = self.last_answers[split] = self.answers(model, split)
      ok = [instructions.is_correct(ex, text) for ex, text in got]
      metrics[f"{split}_exact_match"] = float(np.mean(ok))
      for t in self.config.instruction_tasks:
        sel = [k for (ex, _), k in zip(got, ok) if ex.task == t]
        metrics[f"{split}_exact_match_{t}"] = float(np.mean(sel)) if sel else float("nan")
      lines += [f"[{split}] {'ok ' if k else 'BAD'} {ex.prompt!r} -> "
                f"{instructions.answer_of(text)!r} (want {ex.answer!r})"
                for (ex, text), k in zip(got, ok)]
    with open(os.path.join(workdir, f"answers_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, method {self.method}, greedy\n" + "\n".join(lines) + "\n")
    return metrics
