#!/usr/bin/env bash
# test/emu/ptxas-launcher.sh: a CMAKE_CUDA_COMPILER_LAUNCHER that keeps ptxas's report of the build's
# own CUDA compiles, so that test/emu/nvcc-check.sh can check what ships without compiling it all
# again (NVCC_CHECK_REPORTS=DIR). .ci/run sets it for the install's build:
#   MOE_PTXAS_REPORTS=DIR CMAKE_CUDA_COMPILER_LAUNCHER=$PWD/test/emu/ptxas-launcher.sh npm ci
# For a compile (-c) of a .cu file it adds -Xptxas -v and writes the command line and the compiler's
# stderr to DIR/<file>.ptxas.txt, and the object's path to DIR/<file>.object; the other lines of stderr
# (warnings, errors) still reach the build's output. Any other command runs as it is.
set -u
dir="${MOE_PTXAS_REPORTS:-}"
src="" obj="" compile=0 prev=""
for a in "$@"; do
  case "$a" in
    *.cu) src="$a" ;;
    -c) compile=1 ;;
  esac
  [ "$prev" = "-o" ] && obj="$a"
  prev="$a"
done
if [ -z "$dir" ] || [ "$compile" = 0 ] || [ -z "$src" ]; then exec "$@"; fi
mkdir -p "$dir" || exit 1
name="$(basename "$src" .cu)"
report="$dir/$name.ptxas.txt"
echo "# command: $* -Xptxas -v" >"$report"  # nvcc-check.sh reads the targets from it
"$@" -Xptxas -v 2>>"$report"
rc=$?
# ptxas -v's lines ("ptxas info ...", and the indented spill line after each) stay in the report
grep -v -e '^# command: ' -e '^ptxas info' -e '^    [0-9]* bytes stack frame' "$report" >&2
case "$obj" in /*) ;; *) obj="$PWD/$obj" ;; esac
[ "$rc" = 0 ] && echo "$obj" >"$dir/$name.object"
exit "$rc"
