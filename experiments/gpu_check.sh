#!/usr/bin/env bash
# The GPU checks of a lent device machine, in one call (device time is short: ~15 min a task).
#
#   bash experiments/gpu_check.sh OUTDIR [STAGES]      STAGES: a subset of "tests flash gpt ddpm"
#
# Expects genfm and its missing dependencies installed (the device tool's `.whl` recipe) and a
# CUDA jaxlib. Each stage has its own time limit and writes OUTDIR/<stage>.{jsonl,log}, so a
# stage that fails or runs out of time still leaves the others' numbers:
#   tests  the kernel tests on the GPU (Triton-lowered Pallas, not the interpreter), fp32
#          references at HIGHEST precision (XLA's GPU default for fp32 matmuls is TF32, which
#          would miss the 1e-5 bound by itself)
#   flash  flash_attention bench, bf16: head dim 128 at T = 1k/4k/16k and 64 at 4k, causal and
#          not, Pallas vs XLA vs cuDNN, fwd and fwd+bwd TFLOP/s and temp memory
#   gpt    gpt_train_step (CPU config, GPT-2-small fp32; GPT-2-small bf16 at context 1024 with
#          the default reference_vjp, XLA, cuDNN and our Pallas attention: MFU)
#   Issue #15 (GPU half, not yet run on a device): `gpu_check.sh OUT "flash tune gpt"` gives
#          Pallas vs cuDNN fwd / fwd+bwd at head dim 128, the tile sweep and the MFU rows.
#   ddpm   ddpm_train_step and diffusion_sample (2-D MLP and the :gpu U-Net; DDPM-1000 last;
#          80 s on the H200 ended before the U-Net sampling rows)
#   vision (only when named) vit_vs_resnet (the ViT also with attention_impl xla and pallas) and
#          clip_step at batch 256 and 1,024 (issue #20; not yet run on a device)
#   moderndiff (only when named) issue #19: dit_vs_unet (DiT also with the Pallas flash kernel),
#          flow_sample and cm_vs_ddim (1-step consistency model vs DDIM-50 images/s); not yet run
#          on a device
#   tune   (only when named) the Pallas tile/warps/stages sweep `bench_flash.tune` at H 128,
#          T 16k, non-causal: 24 settings, each a Triton compile of three kernels
#   char   (only when named) the launcher run of shakespeare_char:big_gpu (nanoGPT's GPU recipe,
#          1.2 TFLOP a step x 5,000 steps; needs the Shakespeare corpus in $GENFM_DATA_DIR)
#   scale  (only when named) issue #14: the launcher's GPT-2-small-shape run as DP and as FSDP
#          (300 steps each, steps/s in metrics.jsonl) and the remat memory bench; not yet run
#   fashion (only when named) the FID classifier fashion_lenet, then fashion_ddpm:gpu (15k steps,
#          23.8 ms each on the H200 => ~6 min; one eval at the end: 5,000 guided DDIM-50
#          samples from the EMA weights and 5,000 from the raw ones)
#   Each run's summary, metrics and samples are copied to OUTDIR/runs/<workdir>/ (its log is
#   OUTDIR/<stage>.log), also when the run was cut by its limit; the workdirs stay in runs/
#   (ignored), so such a run resumes in a later call while the machine is still warm.
#
# Limits are ceilings; on the H200 the stages took tests 146 s, flash 68 s, gpt 81 s.
#
# On the device machine (wheels of genfm, grain, array_record, ml_collections, tensorboardX and
# portpicker in .whl/, Fashion-MNIST's idx files in .whl/data/fashion-mnist/, and for `char` the
# corpus: mkdir -p .whl/data/shakespeare; cp ~/.cache/genfm/shakespeare/shakespeare.txt .whl/data/shakespeare/):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site GENFM_DATA_DIR=$PWD/.whl/data bash experiments/gpu_check.sh $OUT
# Results of the H200 run: experiments/bench_results/h200_2026-11-30/ (README there).
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR [STAGES]}
STAGES=${2:-"tests flash gpt ddpm"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

nvidia-smi -L 2>&1 | tee "$OUT/env.log"
$PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
  2>&1 | tee -a "$OUT/env.log"

stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
  echo "== $name: exit $? after $((SECONDS - t0)) s (limit $secs s)"
}

stage tests 200 env JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m pytest -v --tb=short \
  tests/kernels/test_kernels_flash.py tests/kernels/test_kernels_rms_norm.py
[ -f "$OUT/tests.jsonl" ] && grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.jsonl" | tail -n 20

stage flash 150 $PY -c "
import json
from genfm.kernels import bench_flash
emit = lambda r: print(json.dumps(r), flush=True)
bench_flash.run(emit, head_dims=(128,), seq_lens=(1024, 4096, 16384))
bench_flash.run(emit, head_dims=(64,), seq_lens=(4096,))
"
stage tune 300 $PY -c "
import json
from genfm.kernels import bench_flash
bench_flash.tune(lambda r: print(json.dumps(r), flush=True))
"
train() {  # train CONFIG WORKDIR [FLAGS]: a launcher run into runs/WORKDIR
  $PY -m genfm.experiments.run --config="experiments/configs/$1" --workdir="runs/$2" "${@:3}"
}
export -f train; export PY
stage char 420 bash -c 'train shakespeare_char.py:big_gpu gpu_char_big'
# Issue #14 (only when named): GPT-2-small shape (char big_gpu recipe) trained through the
# launcher with the mesh as data parallel and as FSDP over every local GPU (one H200: the two
# layouts coincide, so this checks the path; on 8 GPUs it is the comparison), 300 steps each:
# steps/s in their metrics.jsonl; then the memory bench (remat policies) on the GPU.
stage scale 420 bash -c 'train shakespeare_char.py:big_gpu gpu_char_dp --config.num_train_steps=300 \
  && train shakespeare_char.py:big_gpu gpu_char_fsdp --config.num_train_steps=300 \
     --config.mesh.data=1 --config.mesh.fsdp=-1 && $PY -m genfm.experiments.bench memory'
stage fashion 560 bash -c 'train fashion_lenet.py gpu_fashion_lenet && train fashion_ddpm.py:gpu \
  gpu_fashion_ddpm --config.fid_classifier_workdir=runs/gpu_fashion_lenet'
# The runs' small files (summary, metrics, samples; not checkpoints), also of a run cut by its limit.
for run in runs/gpu_*/; do
  [ -d "$run" ] || continue
  mkdir -p "$OUT/$run" && find "$run" -maxdepth 1 -type f -size -8M -exec cp {} "$OUT/$run" \;
done
stage gpt 140 $PY -m genfm.experiments.bench gpt_train_step
stage ddpm 200 $PY -m genfm.experiments.bench ddpm_train_step diffusion_sample
stage vision 200 $PY -m genfm.experiments.bench vit_vs_resnet clip_step
stage moderndiff 240 $PY -m genfm.experiments.bench dit_vs_unet flow_sample cm_vs_ddim

# The short table (the device reply carries only the end of the output).
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for summary in sorted(out.glob("runs/*/summary.json")):
  print("run", summary.parent.name, summary.read_text().strip()[:400])
for name in ("flash", "tune", "gpt", "ddpm"):
  path = out / f"{name}.jsonl"
  if not path.exists():
    continue
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    if r.get("name") == "flash_attention":
      print(name, r.get("impl"), r.get("pallas_options", ""), "H", r.get("H"), "T", r.get("T"), "causal", r.get("causal"),
            r.get("pass"), f"{r['tflops_per_sec']:.1f} TF/s" if "tflops_per_sec" in r else
            r.get("error", "")[:160], r.get("temp_bytes", ""))
    elif r.get("name") == "gpt_train_step":
      print("gpt", r["shape"], r["dtype"], f"{r['seconds'] * 1e3:.1f} ms",
            f"{r['tokens_per_sec']:.0f} tok/s",
            f"model/peak {r['model_fraction_of_matmul_peak']:.3f}")
    else:
      print(name, {k: v for k, v in r.items() if k in ("name", "config", "sampler", "dtype",
            "batch_size", "seconds", "flops_per_sec", "fraction_of_matmul_peak",
            "examples_per_sec", "samples_per_sec", "device")})
EOF
