#!/usr/bin/env bash
# scripts/gpu-check.sh: the first day on a machine with an NVIDIA GPU, in one script (under 8 minutes
# on a 16-core H100 host). It
#   1. finds node and the dependencies (node_modules; else .gpu/bundle.tar.xz, which
#      `bash scripts/gpu-check.sh --bundle` makes for a machine without node or the npm registry: node,
#      the runtime dependencies, dist/ and an addon; else npm ci),
#   2. gets an addon with the CUDA backend: builds it when nvcc is here, else uses the prebuilt
#      binary (prebuilds/linux-x64) or a carried build/Release,
#   3. runs every test file with MOE_TEST_REQUIRE_BACKEND=<backend> (the device suites then fail
#      unless the kernels run on it), one file at a time, pass/fail per file and per failing test,
#   4. runs the CUDA bench (--backend <backend>, the Mixtral layer shape, T = 1 .. 4096),
#   5. runs compute-sanitizer (memcheck, racecheck, synccheck) over one call of every kernel family
#      (scripts/gpu-kernel-tour.js) where the tool exists,
# and writes one report, $OUT/gpu-report.md (or --out DIR), ending with a line `N passed, N failed`.
#
# Usage: bash scripts/gpu-check.sh [--backend cuda|cuda-emu] [--out DIR] [--quick]
#   --quick: the device suites only (00, 45, 46, 47) and shorter bench rows (.ci/run checks this
#   script that way on cuda-emu)
#        bash scripts/gpu-check.sh --bundle      writes .gpu/bundle.tar.xz (carry .gpu to the GPU machine)
# --backend cuda-emu runs the same logic here, without a GPU, on the emulated test build (the bench
# and the tour are then smoke runs, and compute-sanitizer is skipped).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
backend=cuda
out="${OUT:-$root/gpu-check-out}"
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --bundle)
      # Everything a GPU machine without node and without the npm registry needs, in one file to
      # carry (.gpu/bundle.tar.xz, ~40 MB): the node binary, the runtime dependencies of the tests and
      # the bench (no typescript, no build tools), dist/ and this checkout's addon.
      rm -rf .gpu && mkdir -p .gpu/stage/bin .gpu/stage/node_modules
      cp "$(readlink -f "$(command -v node)")" .gpu/stage/bin/node
      for p in uvu tsx esbuild @esbuild kleur dequal diff sade mri totalist get-tsconfig resolve-pkg-maps \
               @huggingface node-gyp-build node-addon-api; do
        [ -e "node_modules/$p" ] && cp -r "node_modules/$p" .gpu/stage/node_modules/
      done
      cp -r dist .gpu/stage/dist
      for f in prebuilds/linux-x64/*.node build/Release/moe_kernels.node; do
        [ -f "$f" ] && { mkdir -p .gpu/stage/addon && cp "$f" .gpu/stage/addon/moe_kernels.node; break; }
      done
      tar -C .gpu/stage -cJf .gpu/bundle.tar.xz . && rm -rf .gpu/stage
      grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
      echo "gpu-check: .gpu/bundle.tar.xz is $(du -h .gpu/bundle.tar.xz | cut -f1); on the GPU machine: carry .gpu, run bash scripts/gpu-check.sh"
      exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$backend" != cuda ] && [ "$backend" != cuda-emu ]; then echo "gpu-check: --backend must be cuda or cuda-emu" >&2; exit 2; fi
mkdir -p "$out"
report="$out/gpu-report.md"
log="$out/gpu-check.log"
: > "$log"
start=$(date +%s)
passed=0
failed=0
note() { echo "$*" | tee -a "$report"; }
elapsed() { echo "$(( $(date +%s) - start ))s"; }
strip() { sed 's/\x1b\[[0-9;]*m//g'; }

{
  echo "# gpu-check: $(date -u '+%Y-%m-%d %H:%M UTC'), backend $backend"
  echo
  echo '```'
  (nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || echo "nvidia-smi: not found")
  echo "node $(node --version); nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -1 || echo 'not found'); $(nproc) cores"
  echo '```'
  echo
} > "$report"

# ---- 1. dependencies ---------------------------------------------------------------------------------
if [ -f .gpu/bundle.tar.xz ] && [ ! -d .gpu/unpacked ]; then  # carried from a machine that has them
  mkdir -p .gpu/unpacked && tar -C .gpu/unpacked -xJf .gpu/bundle.tar.xz
fi
if ! command -v node >/dev/null && [ -x .gpu/unpacked/bin/node ]; then export PATH="$root/.gpu/unpacked/bin:$PATH"; fi
if ! command -v node >/dev/null; then echo "gpu-check: no node (carry .gpu/bundle.tar.xz: bash scripts/gpu-check.sh --bundle)" | tee -a "$report"; exit 1; fi
[ -d dist ] || { [ -d .gpu/unpacked/dist ] && cp -r .gpu/unpacked/dist dist; }
if [ ! -d node_modules ]; then
  if [ -d .gpu/unpacked/node_modules ]; then
    ln -s .gpu/unpacked/node_modules node_modules
    note "dependencies: the carried bundle (.gpu/bundle.tar.xz)"
  elif npm ci --no-audit --no-fund >>"$log" 2>&1; then
    note "dependencies: npm ci"
  else
    note "dependencies: none (no node_modules, no carried bundle, npm ci failed: see gpu-check.log)"
    note "0 passed, 1 failed"
    exit 1
  fi
fi
if [ ! -f dist/index.js ]; then
  if [ -x node_modules/.bin/tsc ] && npm run build:ts >>"$log" 2>&1; then note "dist: built"; else
    note "dist: missing and cannot be built here (carry dist/)"; note "0 passed, 1 failed"; exit 1
  fi
fi

# ---- 2. the addon ----------------------------------------------------------------------------------------
addon=""
if [ "$backend" = cuda-emu ]; then
  MOE_CUDA_EMU=1 node scripts/build-native.js >>"$log" 2>&1 && addon="$root/build-emu/Release/moe_kernels.node"
elif command -v nvcc >/dev/null && [ -x node_modules/.bin/cmake-js ] && command -v cmake >/dev/null; then
  if node scripts/build-native.js >>"$log" 2>&1; then addon="$root/build/Release/moe_kernels.node"; fi
fi
if [ -z "$addon" ]; then
  for f in "$root"/prebuilds/linux-x64/*.node "$root/build/Release/moe_kernels.node" "$root/.gpu/unpacked/addon/moe_kernels.node"; do
    [ -f "$f" ] && { addon="$f"; break; }
  done
fi
if [ -z "$addon" ]; then
  note "addon: none (no nvcc to build one, no prebuilt binary, no build/Release; see gpu-check.log)"
  note "0 passed, 1 failed"
  exit 1
fi
export MOE_KERNELS_ADDON="$addon"
info=$(node -e "
  const i = require('./dist/index.js').backendInfo();
  const ok = i.cuda.name === '$backend' && i.cuda.available;
  console.log((ok ? 'ok ' : 'no ') + i.cuda.name + ': ' + i.cuda.reason + (i.cuda.device ? ' (' + i.cuda.device.name + ', sm_' + i.cuda.device.computeCapability.replace('.', '') + ', ' + (i.cuda.device.totalMemory / 2 ** 30).toFixed(0) + ' GiB)' : ''))" 2>>"$log")
note "addon: ${addon#$root/} ($(elapsed)); backend ${info#* }"
case "$info" in
  ok*) ;;
  *) note "the '$backend' backend cannot run here: nothing else is checked"; note "0 passed, 1 failed"; exit 1 ;;
esac

# ---- 3. every test file ------------------------------------------------------------------------------------
note ""
note "## Tests (MOE_TEST_REQUIRE_BACKEND=$backend)"
note ""
note "| file | passed | failed | notes |"
note "|---|---|---|---|"
files=(test/*.test.ts)
[ "$quick" = 1 ] && files=(test/00.*.test.ts test/45.*.test.ts test/46.*.test.ts test/47.*.test.ts)
for f in "${files[@]}"; do
  name=$(basename "$f")
  why=""
  case "$name" in
    01.*|90.*) [ -x node_modules/.bin/tsc ] || why="needs typescript (not carried)" ;;
    95.*) [ -d prebuilds ] || why="needs prebuilds/" ;;
    96.*) command -v cmake >/dev/null || why="needs cmake" ;;
  esac
  if [ -n "$why" ]; then note "| $name | - | - | skipped: $why |"; continue; fi
  res=$(MOE_TEST_REQUIRE_BACKEND="$backend" timeout 600 node node_modules/uvu/bin.js -r tsx/cjs test "^${name%%.*}\\." 2>&1 | strip)
  echo "$res" >> "$log"
  total=$(echo "$res" | sed -n 's/^ *Total: *\([0-9]*\).*/\1/p' | tail -1)
  ok=$(echo "$res" | sed -n 's/^ *Passed: *\([0-9]*\).*/\1/p' | tail -1)
  skipped=$(echo "$res" | sed -n 's/^ *Skipped: *\([0-9]*\).*/\1/p' | tail -1)
  if [ -z "$total" ] || [ -z "$ok" ]; then
    note "| $name | 0 | 1 | no summary: it crashed or hung (gpu-check.log) |"
    failed=$((failed + 1))
    continue
  fi
  bad=$((total - ok - ${skipped:-0}))
  fails=$(echo "$res" | grep -E '^ *FAIL ' | sed -E 's/^ *FAIL +//; s/\|/\\|/g' | head -5 | paste -sd ';' -)
  note "| $name | $ok | $bad | ${fails} |"
  passed=$((passed + ok))
  failed=$((failed + bad))
done
note ""
note "tests: $passed passed, $failed failed ($(elapsed))"

# ---- 4. the CUDA bench ---------------------------------------------------------------------------------------
note ""
note "## Bench (node bench/run.js --backend $backend)"
note ""
bench_args=(--backend "$backend" --json "$out/bench.json")
[ "$backend" = cuda-emu ] && [ "$quick" = 1 ] && bench_args+=(--ci)
if [ "$backend" = cuda ]; then
  bench_args+=(--mixtral --dtypes bfloat16 --layers moe,dense-active --tokens 1,16,64,128,512,4096)
  [ "$quick" = 1 ] && bench_args+=(--budget 0.3) || bench_args+=(--budget 1)
fi
note '```'
if timeout 300 node bench/run.js "${bench_args[@]}" > "$out/bench.txt" 2>>"$log"; then
  strip < "$out/bench.txt" | tee -a "$report" > /dev/null
  passed=$((passed + 1))
else
  strip < "$out/bench.txt" | tail -20 | tee -a "$report" > /dev/null
  note "the bench failed (gpu-check.log)"
  failed=$((failed + 1))
fi
note '```'

# ---- 5. compute-sanitizer over every kernel family ----------------------------------------------------------
note ""
note "## compute-sanitizer (scripts/gpu-kernel-tour.js)"
note ""
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ "$backend" = cuda-emu ]; then
  if node scripts/gpu-kernel-tour.js "$backend" > "$out/tour.txt" 2>&1; then
    note "emulated: no compute-sanitizer; the tour itself ran clean ($(grep -c '^  ' "$out/tour.txt") calls)"
    passed=$((passed + 1))
  else
    note "the tour failed: $(tail -3 "$out/tour.txt")"
    failed=$((failed + 1))
  fi
elif [ -z "$cs" ]; then
  note "compute-sanitizer: not found on this machine (skipped)"
else
  for tool in memcheck racecheck synccheck; do
    if timeout 240 "$cs" --tool "$tool" --error-exitcode 9 --print-limit 20 node scripts/gpu-kernel-tour.js "$backend" > "$out/sanitizer-$tool.txt" 2>&1; then
      note "- $tool: clean"
      passed=$((passed + 1))
    else
      note "- $tool: FAILED: $(grep -m3 -E 'ERROR|Error|error' "$out/sanitizer-$tool.txt" | tr '\n' ' ')"
      failed=$((failed + 1))
    fi
  done
fi

note ""
note "gpu-check took $(elapsed); report: ${report#$root/}"
note "$passed passed, $failed failed"
[ "$failed" = 0 ]
