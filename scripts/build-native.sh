#!/usr/bin/env bash
# Rebuilds the checked-in native shim (src/PeftSharp/Runtime/Native/libpeftsharp_mkl_amd.so) from its C source.
# Needs gcc; users never run this, the built file ships with the library.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/src/PeftSharp/Runtime/Native"
gcc -shared -fPIC -O2 -nostdlib -s -Wl,-z,noseparate-code -Wl,--hash-style=both -Wl,--build-id=none \
    -o "$dir/libpeftsharp_mkl_amd.so" "$dir/mkl_amd_avx512.c"
echo "built $dir/libpeftsharp_mkl_amd.so ($(stat -c %s "$dir/libpeftsharp_mkl_amd.so") bytes)"
