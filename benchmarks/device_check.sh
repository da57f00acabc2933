#!/usr/bin/env bash
# The one prepared accelerator check: on a GPU machine, within 8 minutes,
#   1. the Flamingo-3B-shaped training step in bfloat16 (benchmarks/train_step.py: the paper's
#      mixture, each task's batch divided by $BATCH_DIVISOR, default 32, to fit one chip: 56.3
#      GiB compiled for a TPU v5p chip): step time, tokens/s and MFU;
#   2. flamingo-jax against OpenFlamingo on the benchmark's model, both in bfloat16
#      (benchmarks/compare_openflamingo.py --device=cuda): the training-step and 32-shot
#      decoding rows, no captioning evaluation (pycocoevalcap's Java is not there);
# then one JSON of both, with the machine and the versions, in $OUT/device_check.json ($OUT
# default /tmp/device_check). A part that fails leaves its error in the JSON and the other runs.
#
#   benchmarks/device_check.sh            # on the GPU machine
#   benchmarks/device_check.sh --smoke    # a dry run on this machine's CPU: tiny sizes, 2 minutes
#
# A bare machine gets what its image lacks from the wheels in .whl/ (docs/benchmarks.md names
# them); nothing else is fetched. $PYTHON (default python3) runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
[[ "${1:-}" == "--smoke" ]] && smoke=true
out="${OUT:-/tmp/device_check}"
python="${PYTHON:-python3}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/device_check_site .whl/*.whl
  export PYTHONPATH="/tmp/device_check_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

if $smoke; then
  platform=cpu
  # The tiny sizes' timings do not matter: XLA compiles twice as fast without optimising.
  export XLA_FLAGS="--xla_backend_optimization_level=0"
  step_flags=(--config=configs/tiny.py --steps=2)
  compare_flags=(--smoke --device=cpu)
else
  platform=cuda
  step_flags=(--config=configs/flamingo_3b.py --batch_divisor="${BATCH_DIVISOR:-32}" --steps=5)
  compare_flags=(--device=cuda --threads=8 --shots=32 --runs=3)
fi

# Each part under a time limit of its own, its output kept; its exit status goes to the JSON.
part() {
  local name=$1 limit=$2
  shift 2
  echo "== $name" >&2
  set +e
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo $? > "$out/$name.rc"
  set -e
  tail -n 25 "$out/$name.log" >&2
}

# The step alone on the GPU: JAX may take 95% of its memory (75% by default).
JAX_PLATFORMS=$platform XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 \
  part train_step 300 "$python" benchmarks/train_step.py \
  "${step_flags[@]}" --config.precision=bfloat16 --json="$out/train_step.json"
part compare 180 "$python" benchmarks/compare_openflamingo.py "${compare_flags[@]}" \
  --dtype=bfloat16 --eval_queries=0 --scaling_images= --scaling_lengths= \
  --json="$out/compare.json"

"$python" - "$out" <<'EOF'
import datetime, importlib.metadata, json, pathlib, subprocess, sys

out = pathlib.Path(sys.argv[1])
def version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None
try:
  gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
  gpus = None
result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(), gpus=gpus,
              versions={n: version(n) for n in ("jax", "jaxlib", "flax", "torch",
                                                "transformers", "open_flamingo")})
status = {part: int((out / f"{part}.rc").read_text()) for part in ("train_step", "compare")}
for part, rc in status.items():
  report = out / f"{part}.json"
  result[part] = (json.loads(report.read_text()) if rc == 0 and report.exists() else
                  dict(exit_status=rc, error=(out / f"{part}.log").read_text()[-3000:]))
(out / "device_check.json").write_text(json.dumps(result, indent=1))
print(f"wrote {out / 'device_check.json'}; exit status: " + ", ".join(
    f"{part} {rc}" for part, rc in status.items()))
sys.exit(max(status.values()))
EOF
