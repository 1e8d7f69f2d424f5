#!/usr/bin/env bash
# test/cpu/run.sh: builds and runs the C++ tests of the CPU kernel tables (kernel_tables_test.cc),
# once per table this CPU can run (MOE_CPU_KERNEL=portable, avx2-fma, avx512, avx512-bf16), then
# checks that precision 'exact' on avx512-bf16 gives the avx512 table's bits.
#
# The CPU backend comes from the addon's CMake build (build/libmoe_cpu.a) when that is newer than
# every CPU source; otherwise its sources are compiled here (test/cpu/build, incremental) with the
# same per-ISA flags as CMakeLists.txt and binding.gyp. Each run prints "N passed, M failed".
# Environment: CXX (default g++).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CXX="${CXX:-g++}"
out="$here/build"
mkdir -p "$out"
cpu="$root/native/backends/cpu"

# the flags of a CPU source by its ISA suffix (CMakeLists.txt: MOE_ISA_FLAGS_*)
isa_flags() {
  local avx2=(-mavx2 -mfma -mf16c)
  local avx512=(-mavx512f -mavx512bw -mavx512vl -mavx512dq "${avx2[@]}")
  local extra=""
  case "$1" in */quant_kernels_*) extra="-ffp-contract=off" ;; esac
  case "$1" in
    *_avx512bf16.cc) echo "${avx512[@]} -mavx512bf16" ;;
    *_avx512.cc) echo "${avx512[@]}" ;;
    *_avx512vnni.cc) echo "${avx2[@]} -mavx512f -mavx512bw -mavx512vl -mavx512vnni $extra" ;;
    *_avxvnni.cc) echo "${avx2[@]} -mavxvnni $extra" ;;
    *_avx2.cc) echo "${avx2[@]} $extra" ;;
    *) echo "$extra" ;;
  esac
}

lib="$root/build/libmoe_cpu.a"
fresh=1
[ -f "$lib" ] || fresh=0
for f in "$cpu"/*.cc "$cpu"/*.h "$root"/native/include/moe/*.h; do
  [ "$fresh" = 1 ] && [ "$f" -nt "$lib" ] && fresh=0
done
objs=()
if [ "$fresh" = 1 ]; then
  objs=("$lib")
else
  echo "run.sh: build/libmoe_cpu.a missing or older than the CPU sources: compiling them into $out"
  pids=()
  for src in "$cpu"/*.cc; do
    obj="$out/$(basename "$src").o"
    stale=0
    [ -f "$obj" ] || stale=1
    for dep in "$src" "$cpu"/*.h "$root"/native/include/moe/*.h "$here/run.sh"; do
      [ "$stale" = 1 ] || [ "$dep" -nt "$obj" ] && stale=1
    done
    # shellcheck disable=SC2046
    [ "$stale" = 1 ] && { "$CXX" -std=c++17 -O3 -fno-math-errno -Wall -I"$root/native/include" $(isa_flags "$src") -c "$src" -o "$obj" & pids+=($!); }
    objs+=("$obj")
  done
  ok=1
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  [ "$ok" = 1 ] || { echo "run.sh: compiling the CPU backend failed" >&2; exit 1; }
fi

test_srcs=("$here/kernel_tables_test.cc" "$root/test/emu/check.cc")
bin="$out/kernel_tables_test"
stale=0
[ -f "$bin" ] || stale=1
for dep in "${test_srcs[@]}" "${objs[@]}" "$root/test/emu/check.h" "$cpu"/*.h "$root"/native/include/moe/*.h "$here/run.sh"; do
  [ "$stale" = 1 ] || [ "$dep" -nt "$bin" ] && stale=1
done
if [ "$stale" = 1 ]; then
  "$CXX" -std=c++17 -O2 -Wall -I"$root/native/include" -I"$cpu" "${test_srcs[@]}" "${objs[@]}" -pthread -o "$bin" || exit 1
fi

status=0
tables=$("$bin" --tables) || exit 1
for t in $tables; do
  echo "== CPU kernel table $t"
  MOE_CPU_KERNEL="$t" "$bin" "$@" || status=1
done

# precision 'exact' on avx512-bf16 is the avx512 table's f32-activation path: the same bits
if echo "$tables" | grep -qx avx512-bf16; then
  echo "== exact_f32 on avx512-bf16 vs the avx512 table"
  a=$(MOE_CPU_KERNEL=avx512-bf16 "$bin" --exact-hash) b=$(MOE_CPU_KERNEL=avx512 "$bin" --exact-hash)
  if [ "${a#* }" = "${b#* }" ]; then echo "ok   exact_hash ($a, $b)"; echo "1 passed, 0 failed"
  else echo "FAIL exact_hash differs: $a vs $b"; echo "0 passed, 1 failed"; status=1; fi
fi
exit "$status"
