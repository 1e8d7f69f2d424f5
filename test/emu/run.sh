#!/usr/bin/env bash
# test/emu/run.sh: builds and runs the CUDA emulator's tests (primitives, the routing kernel, a tiled
# tensor-core GEMM) with g++ against native/emu: the .cu sources compile as C++ (-x c++ -DMOE_CUDA_EMU).
# The CPU backend (native/backends/cpu) is linked in too, as the twin some tests compare the kernels with.
#
# Passes (each prints one line per test and "N passed, M failed"):
#   1. -O2, the x86-64 assembly fiber switch, the shared-memory race detector on: kernels and tests
#      compiled with the access hooks (-fsanitize=thread, served by native/emu, no TSan runtime)
#   2. -O1 -fsanitize=address,undefined, leak checking on           (skip: MOE_EMU_SKIP_SANITIZERS=1)
#   3. -O2 -DMOE_EMU_UCONTEXT, the portable ucontext fiber fallback  (skip: MOE_EMU_SKIP_UCONTEXT=1)
# The race detector (MOE_EMU_RACECHECK, default 1 here) sees plain loads and stores only in pass 1
# and 3 (ASan and the access hooks exclude each other); ldmatrix and cp.async in every pass.
# Arguments are passed to the test binaries: `test/emu/run.sh routing` runs the tests whose name
# contains "routing", `test/emu/run.sh -routing` all the others. Environment: CXX (default g++), CUDA_HOME (default /usr/local/cuda; only its
# headers are used, cudart is never linked), MOE_EMU_SCHEDULE / MOE_EMU_THREADS (see native/emu/emu.h).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CXX="${CXX:-g++}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
out="$here/build"
mkdir -p "$out"

if [ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]; then
  echo "run.sh: $CUDA_HOME/include/cuda_runtime_api.h not found (set CUDA_HOME)" >&2
  # A user's machine without the CUDA toolkit skips these; CI has the headers and must run them.
  if [ "${CI:-}" = true ]; then exit 2; fi
  echo "run.sh: SKIPPED the CUDA emulator tests"
  echo "0 passed, 0 failed"
  exit 0
fi

common=(-std=c++17 -g1 -Wall -Wextra -Wno-unknown-pragmas -isystem "$CUDA_HOME/include" -I"$root/native/include" -pthread)
runtime_srcs=("$root/native/emu/fiber.cc" "$root/native/emu/emu_worker.cc" "$root/native/emu/emu_shims.cc")
kernel_srcs=("$here/check.cc" "$here/emu_test.cc" "$root/native/backends/cuda/routing.cu" "$here/routing_test.cc"
             "$here/gemm_demo.cu" "$here/gemm_demo_test.cc"
             "$root/native/backends/cuda/permute.cu" "$here/permute_test.cc" "$root/native/backends/cuda/combine.cu" "$here/combine_test.cc")
kernel_srcs+=("$root/native/backends/cuda/grouped_gemm.cu" "$here/grouped_gemm_test.cc")
kernel_srcs+=("$root/native/backends/cuda/router.cu" "$root/native/backends/cuda/moe_forward.cu" "$here/moe_forward_test.cc")
kernel_srcs+=("$root/native/backends/cuda/router_stats.cu" "$here/routing_variants_test.cc")
# The CPU backend, linked in as the twin the CUDA kernels are compared with (routing_variants_test).
kernel_srcs+=("$root/native/backends/cuda/quant_gemm.cu" "$here/quant_gemm_test.cc")
# Files *_<isa>.cc compile with that instruction set's flags, as in CMakeLists.txt (MOE_ISA_FLAGS_*).
cpu_srcs=()
for f in "$root"/native/backends/cpu/*.cc; do case "$f" in *_avx2.cc|*_avx512.cc|*_avx512bf16.cc|*_avxvnni.cc|*_avx512vnni.cc) ;; *) cpu_srcs+=("$f") ;; esac; done
cpu_avx2_srcs=("$root"/native/backends/cpu/*_avx2.cc)
cpu_avx512_srcs=("$root"/native/backends/cpu/*_avx512.cc)
cpu_avx512bf16_srcs=("$root"/native/backends/cpu/*_avx512bf16.cc)
cpu_avxvnni_srcs=("$root"/native/backends/cpu/*_avxvnni.cc)
cpu_avx512vnni_srcs=("$root"/native/backends/cpu/*_avx512vnni.cc)
avx2_flags=(-mavx2 -mfma -mf16c)
avx512_flags=(-mavx512f -mavx512bw -mavx512vl -mavx512dq "${avx2_flags[@]}")
avxvnni_flags=(-mavx2 -mfma -mf16c -mavxvnni)
avx512vnni_flags=(-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni)
cpu_flags=(-fno-math-errno)
kernel_srcs+=("$root/native/backends/cuda/token_ops.cu" "$root/native/backends/cuda/attention.cu" "$root/native/backends/cuda/sampling.cu"
             "$here/decoder_kernels_test.cc")
# The race detector's access hooks (native/emu/emu.h, set_racecheck); -Wno-tsan: GCC warns that
# ThreadSanitizer does not model fences, which is the emulator's business, not TSan's.
race=(-fsanitize=thread --param tsan-instrument-func-entry-exit=0 -Wno-tsan)
if "$CXX" --version 2>/dev/null | grep -qi clang; then race=(-fsanitize=thread); fi  # its entry hooks are no-ops
export MOE_EMU_RACECHECK="${MOE_EMU_RACECHECK:-1}"
headers=("$root"/native/emu/*.h "$root"/native/backends/cuda/*.cuh "$root"/native/backends/cuda/*.h "$root"/native/backends/cpu/*.h "$here"/*.h
         "$root"/native/include/moe/*.h)

# compile DIR FLAGS... -- SOURCES...: compiles the sources into DIR (in parallel), skipping objects
# newer than their source, every header and this script; prints the object paths.
compile() {
  local dir="$1"
  shift
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  mkdir -p "$dir"
  local pids=()
  for src in "$@"; do
    local obj="$dir/$(basename "$src").o"
    local stale=0
    [ -f "$obj" ] || stale=1
    for dep in "$src" "${headers[@]}" "$here/run.sh"; do
      [ "$stale" = 1 ] || [ "$dep" -nt "$obj" ] && stale=1
    done
    if [ "$stale" = 1 ]; then
      local lang=()
      case "$src" in *.cu|*_test.cc) lang=(-x c++ -DMOE_CUDA_EMU) ;; esac
      "$CXX" "${common[@]}" "${flags[@]}" "${lang[@]}" -c "$src" -o "$obj" >&2 & pids+=($!)
    fi
    echo "$obj"
  done
  local ok=1
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  [ "$ok" = 1 ] || { echo "run.sh: compilation in $dir failed" >&2; return 1; }
}

# The race detector's mutants (race_mutant.cu): a kernel file compiled unchanged with one call site,
# found here by its text, turned by macros into a missing or misplaced barrier. A text that is gone
# fails the run: the mutant would silently be the original kernel.
# mutant_line FILE TEXT [AFTER]: the number of the first line after AFTER that contains TEXT.
mutant_line() {
  local n
  n=$(awk -v t="$2" -v from="${3:-0}" 'NR > from && index($0, t) { print NR; exit }' "$1")
  [ -n "$n" ] || { echo "run.sh: '$2' is no longer in $1: update test/emu/race_mutant.cu's anchors" >&2; return 1; }
  echo "$n"
}
# compile_mutants DIR FLAGS...: the three mutants' objects (in parallel); prints their paths.
compile_mutants() {
  local dir="$1"
  shift
  local gg="$root/native/backends/cuda/grouped_gemm.cu" pm="$root/native/backends/cuda/permute.cu"
  local bar commit sw
  bar=$(mutant_line "$gg" "__syncthreads();                   // ...everybody's") || return 1
  commit=$(mutant_line "$gg" "moe_cp_async_commit();" "$bar") || return 1
  sw=$(mutant_line "$pm" "__syncwarp();  // every lane has read its count") || return 1
  mkdir -p "$dir"
  local defs=("1 $bar $commit $gg" "2 $bar 0 $gg" "3 $sw 0 $pm") pids=() ok=1
  for d in "${defs[@]}"; do
    set -- $d
    local obj="$dir/race_mutant_$1.o" stale=0
    [ -f "$obj" ] || stale=1
    for dep in "$here/race_mutant.cu" "$4" "${headers[@]}" "$here/run.sh"; do
      [ "$stale" = 1 ] || [ "$dep" -nt "$obj" ] && stale=1
    done
    if [ "$stale" = 1 ]; then
      "$CXX" "${common[@]}" "${flags_mutant[@]}" -x c++ -DMOE_CUDA_EMU -DMOE_MUTANT="$1" -DMOE_MUTANT_LINE="$2" \
        -DMOE_MUTANT_LINE2="$3" -Dmoe="moe_mutant$1" -c "$here/race_mutant.cu" -o "$obj" >&2 & pids+=($!)
    fi
    echo "$obj"
  done
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  [ "$ok" = 1 ] || { echo "run.sh: compilation of the race mutants failed" >&2; return 1; }
}

# link NAME FLAGS... -- OBJECTS...
link() {
  local name="$1"
  shift
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  "$CXX" "${common[@]}" "${flags[@]}" "$@" -o "$out/$name"
}

status=0
echo "== emulator tests: -O2, assembly fiber switch, race detector (MOE_EMU_RACECHECK=$MOE_EMU_RACECHECK)"
kernels=$(compile "$out/o2-race" -O2 "${race[@]}" -- "${kernel_srcs[@]}" "$here/race_mutants_test.cc") || exit 1
flags_mutant=(-O2 "${race[@]}")
kernels+=" "$(compile_mutants "$out/o2-race") || exit 1
runtime=$(compile "$out/o2" -O2 -- "${runtime_srcs[@]}") || exit 1
cpu=$(compile "$out/o2" -O2 "${cpu_flags[@]}" -- "${cpu_srcs[@]}") || exit 1
cpu+=" "$(compile "$out/o2" -O2 "${cpu_flags[@]}" "${avx2_flags[@]}" -- "${cpu_avx2_srcs[@]}") || exit 1
cpu+=" "$(compile "$out/o2" -O2 "${cpu_flags[@]}" "${avx512_flags[@]}" -- "${cpu_avx512_srcs[@]}") || exit 1
cpu+=" "$(compile "$out/o2" -O2 "${cpu_flags[@]}" "${avx512_flags[@]}" -mavx512bf16 -- "${cpu_avx512bf16_srcs[@]}") || exit 1
cpu+=" "$(compile "$out/o2" -O2 "${cpu_flags[@]}" "${avxvnni_flags[@]}" -- "${cpu_avxvnni_srcs[@]}") || exit 1
cpu+=" "$(compile "$out/o2" -O2 "${cpu_flags[@]}" "${avx512vnni_flags[@]}" -- "${cpu_avx512vnni_srcs[@]}") || exit 1
kernels+=" $cpu"
link emu_tests -O2 -- $runtime $kernels || exit 1
"$out/emu_tests" "$@" || status=1

if [ "${MOE_EMU_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== emulator tests: -O1 -fsanitize=address,undefined (leak checks on)"
  san=(-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined)
  objs=$(compile "$out/asan" "${san[@]}" -- "${runtime_srcs[@]}" "${kernel_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" -- "${cpu_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" "${avx2_flags[@]}" -- "${cpu_avx2_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" "${avx512_flags[@]}" -- "${cpu_avx512_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" "${avx512_flags[@]}" -mavx512bf16 -- "${cpu_avx512bf16_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" "${avxvnni_flags[@]}" -- "${cpu_avxvnni_srcs[@]}") || exit 1
  objs+=" "$(compile "$out/asan" "${san[@]}" "${cpu_flags[@]}" "${avx512vnni_flags[@]}" -- "${cpu_avx512vnni_srcs[@]}") || exit 1
  link emu_tests_asan "${san[@]}" -- $objs || exit 1
  ASAN_OPTIONS="detect_leaks=1:${ASAN_OPTIONS:-}" UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}" \
    "$out/emu_tests_asan" "$@" || status=1
fi

if [ "${MOE_EMU_SKIP_UCONTEXT:-0}" != 1 ]; then
  # Only the runtime depends on the fiber implementation: the kernels' objects are shared with pass 1.
  echo "== emulator tests: -O2 -DMOE_EMU_UCONTEXT (portable fiber fallback)"
  runtime=$(compile "$out/ucontext" -O2 -DMOE_EMU_UCONTEXT -- "${runtime_srcs[@]}") || exit 1
  link emu_tests_ucontext -O2 -- $runtime $kernels || exit 1
  # swapcontext makes a system call per switch, so cases heavy in warp collectives take 10-30x
  # longer here than in pass 1, and the large ones add nothing about fibers that the small ones do
  # not already cover (every barrier, collective and exit path of the fallback runs in those):
  # left out are the routing sweep, the decoder ops' long sweeps (*_sweep), and the cases that
  # took 5-275 s each here (together 8.5 of this pass's 9 minutes in CI): paged attention against
  # contiguous, the router variants and the MoE forward against the CPU twin, the large and wide
  # GEMM tiles, the decode GEMV over token counts, every quant format, RMS norm.
  "$out/emu_tests_ucontext" -routing -_sweep -paged_attention_equals -variants_router_kernels -variants_moe_forward \
    -large_tile -wide_tile -decode_tokens_1_to_4 -quant_gemm_every_format -rms_norm_and_fused_add "$@" || status=1
fi

echo "run.sh: ${SECONDS}s in all"
exit "$status"
