"""Language modelling: a GPT (Radford et al. 2019) trained by next-token cross-entropy.

    L(θ) = −(1/(B·T)) Σ_{b,t} log p_θ(x_{b,t+1} | x_{b,≤t})      (nats per token)

The tokenizer comes from the config: `char` (one id per character of the training text, so the
loss is in nats/char) or `bpe` (the byte-level BPE of Sennrich et al. 2016, arXiv:1508.07909,
from `genfm.transformers.tokenizer`, trained deterministically on a prefix of the training text
and cached on disk). Training windows are `data.WindowSource` over the encoded train split (every
offset a window, as nanoGPT's `get_batch`); evaluation reads `eval_windows` fixed, evenly spaced,
non-overlapping validation windows. With BPE the eval also reports `loss_per_char` (total nats /
total characters of the same targets) so a BPE model compares with a char model. MoE models add
the Switch load-balancing loss (eq. 4 of 2101.03961) and the router z-loss (eq. 5 of 2202.08906).
`after_eval` writes KV-cache samples from a fixed prompt to `workdir/samples_step{N}.txt`.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from genfm.experiments import data
from genfm.experiments.data import text as text_data
from genfm.experiments.errors import ConfigError, unknown_choice
from genfm.experiments.tasks.base import Batch, Task
from genfm.transformers import gpt, sampling
from genfm.transformers.tokenizer import BPETokenizer, CharTokenizer

TOKENIZERS = ("char", "bpe")
GPT_FIELDS = tuple(f.name for f in dataclasses.fields(gpt.GPTConfig) if f.name != "vocab_size")


# ---------------------------------------------------------------------------------------------
# Fast whole-corpus encoders (numpy); the tokenizers' own `encode` is the reference they equal.


def _merge_np(ids_N: np.ndarray, pair: tuple[int, int], new_id: int) -> np.ndarray:
  """`tokenizer._merge` vectorised: replace non-overlapping `pair`s, left to right, by `new_id`."""
  a, b = pair
  pos = np.flatnonzero((ids_N[:-1] == a) & (ids_N[1:] == b))
  if pos.size == 0:
    return ids_N
  if a == b:  # "aaa": hits at 0 and 1 overlap; left to right keeps the 1st, 3rd, ... of a run
    run_start = np.concatenate([[True], np.diff(pos) != 1])
    first = pos[run_start][np.cumsum(run_start) - 1]
    pos = pos[(pos - first) % 2 == 0]
  out = ids_N.copy()
  out[pos] = new_id
  keep = np.ones(ids_N.shape[0], bool)
  keep[pos + 1] = False
  return out[keep]


def bpe_encode(tok: BPETokenizer, text: str) -> np.ndarray:
  """`tok.encode(text)` as int32 [N], in seconds for megabytes of text.

  Equal to `tok.encode`: a merge only creates pairs that contain its new id, whose rank is
  higher, so the lowest-rank pair present only ever increases and applying the merges once each,
  in rank order, over the whole text is the same computation.
  """
  ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
  for pair, new_id in sorted(tok.merges.items(), key=lambda kv: kv[1]):
    ids = _merge_np(ids, pair, new_id)
  return ids


def char_encode(tok: CharTokenizer, text: str) -> np.ndarray:
  """`tok.encode(text)` as int32 [N] (a sorted-alphabet lookup); unknown characters raise."""
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  alphabet = np.array([ord(c) for c in tok.chars], np.uint32)  # sorted(str) = code-point order
  idx = np.minimum(np.searchsorted(alphabet, codes), len(alphabet) - 1)
  if not np.all(alphabet[idx] == codes):
    tok.encode(text)  # raises the tokenizer's own error naming the unknown characters
  return idx.astype(np.int32)


def _digest(s: str) -> str:
  return hashlib.sha1(s.encode("utf-8")).hexdigest()[:12]


def trained_bpe(text: str, vocab_size: int, train_chars: int, cache: str | None) -> BPETokenizer:
  """BPE trained on `text[:train_chars]`; merges cached in `cache` keyed by the settings."""
  prefix = text[:train_chars]
  path = None
  if cache:
    path = os.path.join(cache, f"bpe_v{vocab_size}_n{len(prefix)}_{_digest(prefix)}.json")
    if os.path.exists(path):
      return BPETokenizer.load(path)
  tok = BPETokenizer.train(prefix, vocab_size)  # deterministic: ties go to the first-seen pair
  if path:
    os.makedirs(cache, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    tok.save(tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
  return tok


def eval_window_starts(num_tokens: int, seq_len: int, num_windows: int) -> np.ndarray:
  """Starts of `num_windows` non-overlapping windows spread evenly over `num_tokens` tokens.

  Window w reads tokens [s, s + T] (inputs s..s+T−1, targets s+1..s+T); slots of T tokens are
  disjoint, so no target is counted twice. All slots are used when fewer than asked exist.
  """
  slots = (num_tokens - 1) // seq_len
  if slots < 1:
    raise ConfigError(f"the validation split holds {num_tokens} tokens, fewer than one window "
                      f"of context_len + 1 = {seq_len + 1}")
  n = min(num_windows, slots)
  return np.unique(np.round(np.linspace(0, slots - 1, n)).astype(np.int64)) * seq_len


class _Windows:
  """Random-access source of fixed windows {"inputs", "targets"}: int32 [T] each."""

  def __init__(self, tokens_N: np.ndarray, starts: np.ndarray, seq_len: int):
    self._tokens, self.starts, self.seq_len = tokens_N, starts, seq_len

  def __len__(self) -> int:
    return len(self.starts)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    s = int(self.starts[i])
    chunk_T1 = self._tokens[s:s + self.seq_len + 1]
    return {"inputs": chunk_T1[:-1], "targets": chunk_T1[1:]}

  def __repr__(self) -> str:
    return f"_Windows(n={len(self)}, seq_len={self.seq_len})"


# ---------------------------------------------------------------------------------------------


class LanguageModelTask(Task):
  """`config.dataset` text → `config.tokenizer` ∈ {char, bpe} → GPT(`config.model`) → CE."""

  def __init__(self, config):
    super().__init__(config)
    if config.dataset not in data.TEXT_NAMES:
      raise unknown_choice("config.dataset (a text corpus for the lm task)", config.dataset,
                           data.TEXT_NAMES)
    kind = config.get("tokenizer", "char")
    if kind not in TOKENIZERS:
      raise unknown_choice("config.tokenizer", kind, TOKENIZERS)
    train_text = data.load_text(config.dataset, "train")
    val_text = data.load_text(config.dataset, "validation")
    if kind == "char":
      self.tokenizer = CharTokenizer.train(train_text)
      encode = lambda s: char_encode(self.tokenizer, s)
    else:
      cache = config.get("bpe_cache_dir", "") or str(text_data.cache_dir() / "bpe")
      self.tokenizer = trained_bpe(train_text, config.vocab_size, config.bpe_train_chars, cache)
      encode = lambda s: bpe_encode(self.tokenizer, s)
    self.kind = kind
    self._encode = encode
    self.model_config = self._gpt_config(config, self.tokenizer.vocab_size)
    T = self.model_config.context_len
    self.train_tokens = encode(train_text)  # [N_train]
    try:
      val_tokens = encode(val_text)  # [N_val]
    except ValueError as e:
      raise ConfigError(f"the validation text cannot be encoded: {e}") from None
    self.val_tokens = val_tokens
    starts = eval_window_starts(len(val_tokens), T, config.get("eval_windows", 200))
    self._eval = _Windows(val_tokens, starts, T)
    # Characters the eval targets cover: a byte-level token holds as many characters as it has
    # UTF-8 lead bytes (bytes outside 0x80..0xBF), so the sum over targets is exact.
    targets = np.concatenate([self._eval[i]["targets"] for i in range(len(self._eval))])
    self.eval_tokens = int(targets.size)
    self.eval_chars = int(self._chars_per_id()[targets].sum())
    self.prompt_BT = self.prompt_tokens(config.get("sample_prompt", "\n"),
                                        config.get("sample_new_tokens", 0))

  # -- tokenizer -----------------------------------------------------------------------------

  @staticmethod
  def _gpt_config(config, vocab_size: int) -> gpt.GPTConfig:
    unknown = sorted(set(config.model.keys()) - set(GPT_FIELDS))
    if unknown:
      raise ConfigError(f"unknown key(s) {unknown} under config.model; valid: "
                        f"{', '.join(GPT_FIELDS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items()}
    try:
      return gpt.GPTConfig(vocab_size=vocab_size, **kwargs)
    except ValueError as e:  # GPTConfig names the bad field and its valid choices
      raise ConfigError(f"config.model: {e}") from None

  def _chars_per_id(self) -> np.ndarray:
    """[V] characters each id decodes to (1 for char; UTF-8 lead bytes for byte-level BPE)."""
    if self.kind == "char":
      return np.ones(self.tokenizer.vocab_size, np.int64)
    return np.array([sum(1 for b in self.tokenizer.vocab[i] if not 0x80 <= b <= 0xBF)
                     for i in range(self.tokenizer.vocab_size)], np.int64)

  def encode(self, s: str) -> np.ndarray:
    """Token ids int32 [N] of `s` (ValueError naming unknown characters for `char`)."""
    return self._encode(s)

  def decode(self, ids) -> str:
    return self.tokenizer.decode(int(i) for i in np.asarray(ids).reshape(-1))

  def prompt_tokens(self, prompt: str, max_new_tokens: int) -> np.ndarray:
    """The sampling prompt as int32 [num_samples, T0]; ConfigError if it cannot be sampled from."""
    if not isinstance(prompt, str) or not prompt:
      raise ConfigError(f"config.sample_prompt must be a non-empty string, got {prompt!r}")
    try:
      ids = self.encode(prompt)
    except ValueError as e:
      raise ConfigError(f"config.sample_prompt {prompt!r} cannot be encoded by the "
                        f"{self.kind} tokenizer: {e}") from None
    ctx = self.model_config.context_len
    if len(ids) + max_new_tokens > ctx:
      raise ConfigError(
          f"config.sample_prompt is {len(ids)} tokens; with sample_new_tokens={max_new_tokens} "
          f"that is {len(ids) + max_new_tokens} > context_len={ctx}. Shorten the prompt or "
          "lower sample_new_tokens")
    n = self.config.get("num_samples", 2)
    if max_new_tokens > 0:                # checked before the first step, not at the first eval
      if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"config.num_samples must be a positive integer (samples per eval), "
                          f"got {n!r}; set sample_new_tokens=0 to write no samples")
      try:
        sampling.check_sampling_params(self.config.get("sample_temperature", 0.8),
                                       self.config.get("sample_top_k", None), None,
                                       self.tokenizer.vocab_size)
      except ValueError as e:
        raise ConfigError(f"config.sample_temperature / sample_top_k: {e}") from None
    return np.tile(ids[None], (n if max_new_tokens > 0 else 1, 1)).astype(np.int32)

  # -- Task contract --------------------------------------------------------------------------

  def train_source(self):
    return data.WindowSource(self.train_tokens, self.model_config.context_len)

  def eval_sources(self):
    return {"validation": self._eval}

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return gpt.GPT(self.model_config, rngs=rngs)

  def _aux_loss(self, aux: dict) -> jax.Array:
    return (self.config.get("load_balance_weight", 0.01) * aux["load_balance"]  # eq. (4) α
            + self.config.get("router_z_weight", 1e-3) * aux["router_z"])

  def loss(self, model, batch: Batch, key: jax.Array):
    del key  # dropout draws from the model's own RNG stream (checkpointed with its state)
    logits_BTV, aux = model(batch["inputs"], return_aux=True)
    ce = gpt.lm_loss(logits_BTV, batch["targets"])  # nats/token, logits in fp32
    if self.model_config.num_experts == 0:
      return ce, {"ce": ce}
    return ce + self._aux_loss(aux), {"ce": ce, **aux}

  def eval_metrics(self, model, batch: Batch):
    logits_BTV, aux = model(batch["inputs"], return_aux=True)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BTV.astype(jnp.float32), batch["targets"])
    w_BT = jnp.broadcast_to(batch["mask"][:, None], ce_BT.shape)  # padding rows weigh 0
    ce_sum, count = jnp.sum(ce_BT * w_BT), jnp.sum(w_BT)
    out = {"loss": ce_sum, "count": count}
    if self.kind == "bpe":  # Σ nats / Σ chars of the fixed eval targets, once divided by count
      out["loss_per_char"] = ce_sum * (self.eval_tokens / self.eval_chars)
    if self.model_config.num_experts:  # per-batch values, weighted by the batch's real tokens
      out.update({k: aux[k] * count for k in ("load_balance", "router_z", "dropped_fraction")})
    return out

  def after_eval(self, model, workdir: str, step: int) -> dict[str, float]:
    extra = {"validation_chars_per_token": self.eval_chars / self.eval_tokens}
    n_new = self.config.get("sample_new_tokens", 0)
    if n_new <= 0:
      return extra
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    tokens_BT, _ = sampling.generate(
        model, jnp.asarray(self.prompt_BT), n_new, key=key,
        temperature=self.config.get("sample_temperature", 0.8),
        top_k=self.config.get("sample_top_k", None), use_cache=True)
    texts = [self.decode(row) for row in np.asarray(tokens_BT)]
    sep = "\n" + "-" * 40 + "\n"
    with open(os.path.join(workdir, f"samples_step{step}.txt"), "w", encoding="utf-8") as f:
      f.write(f"# step {step}, prompt {json.dumps(self.config.get('sample_prompt', ''))}, "
              f"{n_new} new tokens, KV cache{sep}" + sep.join(texts) + "\n")
    return extra
