#!/usr/bin/env bash
# test/emu/nvcc-check.sh: compiles the CUDA sources with nvcc for every shipped target (sm_80, sm_86,
# sm_89, sm_90, sm_100, sm_120 SASS, plus compute_120 PTX for newer GPUs: CMakeLists.txt's
# CUDA_ARCHITECTURES), prints ptxas's report per kernel and target, the size of each object, and
# fails when a kernel spills registers (non-zero "spill stores" or "spill loads") or a file does not
# compile, or when a tensor-core kernel of grouped_gemm.cu has no mma.sync in its PTX.
# No GPU needed. Files: native/backends/cuda/*.cu, and test/emu/gemm_demo.cu,
# which exercises every inline-PTX wrapper of cuda_compat.cuh.
# Environment: CUDA_HOME (default /usr/local/cuda), NVCC_FLAGS (extra flags), NVCC_ARCHS (the SASS
# targets, default "80 86 89 90 100 120"; e.g. NVCC_ARCHS=120 to check one while iterating),
# NVCC_PTX (the PTX target, default 120; "" for none), NVCC_JOBS (files compiled at once, default
# all of them), NVCC_CHECK_REPORTS=DIR: the package's own files are not compiled again, their reports
# are those the build kept through test/emu/ptxas-launcher.sh (.ci/run: the install's build, so the
# check is of the shipped objects, compiled with CMake's flags); each must cover every target.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${NVCC:-$CUDA_HOME/bin/nvcc}"
out="$here/build/nvcc"
mkdir -p "$out"

archs=(${NVCC_ARCHS:-80 86 89 90 100 120})
ptx="${NVCC_PTX-120}"
targets=()
for a in "${archs[@]}"; do targets+=(-gencode "arch=compute_$a,code=sm_$a"); done
[ -n "$ptx" ] && targets+=(-gencode "arch=compute_$ptx,code=compute_$ptx")
# The tensor-core check reads PTX of the newest target (the shipped PTX when there is one).
check_ptx="${ptx:-${archs[-1]}}"
files=("$root"/native/backends/cuda/*.cu "$here/gemm_demo.cu")
reports="${NVCC_CHECK_REPORTS:-}"
if [ -n "$reports" ] && [ -d "$reports" ]; then reports="$(cd "$reports" && pwd)"; fi

status=0
# report_of FILE / object_of FILE: ptxas's report and the object of FILE (compiled here, or by the build)
from_build() { [ -n "$reports" ] && [ "$1" != "$here/gemm_demo.cu" ]; }
report_of() { if from_build "$1"; then echo "$reports/$(basename "$1" .cu).ptxas.txt"; else echo "$out/$(basename "$1" .cu).ptxas.txt"; fi; }
object_of() { if from_build "$1"; then cat "$reports/$(basename "$1" .cu).object" 2>/dev/null; else echo "$out/$(basename "$1" .cu).o"; fi; }
pids=()
# PTX of the grouped GEMM for the tensor-core check at the end, compiled alongside the objects.
gg_ptx="$out/grouped_gemm.compute_$check_ptx.ptx"
"$NVCC" -std=c++17 -O3 -I "$root/native/include" -ptx -arch="compute_$check_ptx" ${NVCC_FLAGS:-} "$root/native/backends/cuda/grouped_gemm.cu" \
  -o "$gg_ptx" >"$out/grouped_gemm.ptx.txt" 2>&1 &
gg_ptx_pid=$!
jobs="${NVCC_JOBS:-${#files[@]}}"
for f in "${files[@]}"; do
  name="$(basename "$f" .cu)"
  if from_build "$f"; then pids+=(""); continue; fi
  while [ "$(jobs -rp | wc -l)" -gt "$jobs" ]; do sleep 0.2; done
  "$NVCC" -std=c++17 -O3 -I "$root/native/include" -c "${targets[@]}" -Xptxas -v ${NVCC_FLAGS:-} "$f" -o "$out/$name.o" \
    >"$out/$name.ptxas.txt" 2>&1 &
  pids+=($!)
done
for i in "${!files[@]}"; do
  f="${files[$i]}"
  name="$(basename "$f" .cu)"
  report="$(report_of "$f")"
  object="$(object_of "$f")"
  if from_build "$f"; then
    if [ ! -f "$report" ] || [ ! -f "$object" ]; then
      echo "nvcc-check: no report of $name.cu in $reports (the build did not compile it through test/emu/ptxas-launcher.sh)"
      status=1
      continue
    fi
    # the targets the build compiled for, from its command line (a file of host code has no
    # kernel for ptxas to report on, so its report alone would not show them)
    missing=""
    for a in "${archs[@]}"; do sed -n 1p "$report" | grep -Eq "code=\[?([a-z_0-9]*,)*sm_$a([],]|$| )" || missing+=" sm_$a"; done
    if [ -n "$missing" ]; then
      echo "nvcc-check: the build did not compile $name.cu for$missing ($(sed -n 1p "$report"))"
      status=1
      continue
    fi
  elif ! wait "${pids[$i]}"; then
    echo "nvcc-check: $name.cu does not compile:"
    cat "$report"
    status=1
    continue
  fi
  echo "== $name.cu ($(stat -c %s "$object") bytes of object; full ptxas report: ${report#$root/})"
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
    END { exit spilled ? 3 : 0 }' "$report"
  if [ $? -ne 0 ]; then
    echo "nvcc-check: $name.cu spills registers"
    status=1
  fi
done
# The f16/bf16 grouped GEMM must really run on tensor cores: every entry of its tensor-core kernel
# (bf16/f16 x GEMM1 / GEMM2 with f32 output / launch_linear's 16-bit output: 6 with the default tile, plus
# bf16/f16 x GEMM1 / GEMM2 with the large tile and with the wide tile: 14) in the PTX
# holds mma.sync m16n8k16, ldmatrix and cp.async.
if wait "$gg_ptx_pid"; then
  awk '
    /^(\.visible )?\.entry/ {
      name = $NF; sub(/\(.*/, "", name); tc = name ~ /grouped_gemm_tc_kernel/
      if (tc) { n++; m[name] = 0; l[name] = 0; c[name] = 0 }
    }
    tc && /mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)/ { m[name]++ }
    tc && /ldmatrix\.sync\.aligned/ { l[name]++ }
    tc && /cp\.async\.cg\.shared\.global/ { c[name]++ }
    END {
      bad = n != 14
      for (k in m) {
        if (!m[k] || !l[k] || !c[k]) bad = 1
        printf "   tensor-core PTX: %4d mma.sync %3d ldmatrix %3d cp.async  %s\n", m[k], l[k], c[k], k
      }
      exit bad ? 3 : 0
    }' "$gg_ptx" | { if command -v c++filt >/dev/null; then c++filt; else cat; fi; } || {
    echo "nvcc-check: grouped_gemm.cu: a tensor-core kernel lacks mma.sync/ldmatrix/cp.async (or not 14 of them)"
    status=1
  }
else
  echo "nvcc-check: grouped_gemm.cu does not compile to PTX:"; cat "$out/grouped_gemm.ptx.txt"; status=1
fi
total=0
for f in "${files[@]}"; do o="$(object_of "$f")"; [ -n "$o" ] && [ -f "$o" ] && total=$((total + $(stat -c %s "$o"))); done
echo "nvcc-check: $total bytes of objects in all for sm_${archs[*]}${ptx:+ + compute_$ptx PTX}"
[ "$status" = 0 ] && echo "nvcc-check: all files compile for sm_${archs[*]}${ptx:+ + compute_$ptx PTX}, no spills"
exit "$status"
