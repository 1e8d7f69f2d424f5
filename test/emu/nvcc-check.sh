#!/usr/bin/env bash
# test/emu/nvcc-check.sh: compiles the CUDA sources with nvcc for every shipped target (sm_80, sm_86,
# sm_89, sm_90 SASS, plus compute_90 PTX for newer GPUs), prints ptxas's report per kernel and
# target, and fails when a kernel spills registers (non-zero "spill stores" or "spill loads") or
# a file does not compile. No GPU needed. Files: native/src/cuda/*.cu, and test/emu/gemm_demo.cu,
# which exercises every inline-PTX wrapper of cuda_compat.cuh.
# Environment: CUDA_HOME (default /usr/local/cuda), NVCC_FLAGS (extra flags).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${NVCC:-$CUDA_HOME/bin/nvcc}"
out="$here/build/nvcc"
mkdir -p "$out"

targets=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86
         -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90
         -gencode arch=compute_90,code=compute_90)
files=("$root"/native/src/cuda/*.cu "$here/gemm_demo.cu")

status=0
pids=()
for f in "${files[@]}"; do
  name="$(basename "$f" .cu)"
  "$NVCC" -std=c++17 -O3 -c "${targets[@]}" -Xptxas -v ${NVCC_FLAGS:-} "$f" -o "$out/$name.o" \
    >"$out/$name.ptxas.txt" 2>&1 &
  pids+=($!)
done
for i in "${!files[@]}"; do
  name="$(basename "${files[$i]}" .cu)"
  if ! wait "${pids[$i]}"; then
    echo "nvcc-check: $name.cu does not compile:"
    cat "$out/$name.ptxas.txt"
    status=1
    continue
  fi
  echo "== $name.cu (full ptxas report: ${out#$root/}/$name.ptxas.txt)"
  # One line per kernel and target: registers, stack frame, spills, shared memory.
  awk -v filt="$(command -v c++filt || true)" '
    /Compiling entry function/ { split($0, q, "\047"); arch = q[4] }
    /Function properties for/ { fn = $NF }
    /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
    /Used [0-9]+ registers/ {
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      smem = "0"; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
      pretty = fn
      if (filt != "") { cmd = filt " \"" fn "\""; cmd | getline pretty; close(cmd) }
      flag = (spill_st + 0 > 0 || spill_ld + 0 > 0) ? "  <-- SPILLS" : ""
      printf "   %-6s %4s regs  %4s B stack  %4s B spill st  %4s B spill ld  %6s B smem  %s%s\n",
             arch, regs, stack, spill_st, spill_ld, smem, pretty, flag
      if (flag != "") spilled = 1
    }
    END { exit spilled ? 3 : 0 }' "$out/$name.ptxas.txt"
  if [ $? -ne 0 ]; then
    echo "nvcc-check: $name.cu spills registers"
    status=1
  fi
done
[ "$status" = 0 ] && echo "nvcc-check: all files compile for sm_80 sm_86 sm_89 sm_90 + compute_90 PTX, no spills"
exit "$status"
