#!/usr/bin/env bash
# qemu-user, for tests/test_emulated_avx2.py: ONNX Runtime's real INT8 kernels on an emulated
# AVX2-only CPU (no AVX-512, no VNNI), whatever x86 CPU runs the suite. Best effort, idempotent:
# installed from Debian's packages where apt-get runs as root; elsewhere those tests skip.
set -uo pipefail
command -v qemu-x86_64 >/dev/null 2>&1 && exit 0
[ "$(uname -m)" = x86_64 ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing qemu-user (tests on an emulated AVX2-only CPU)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q qemu-user >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q qemu-user >/dev/null 2>&1; } \
    || echo "qemu-user could not be installed: the tests on an emulated AVX2 CPU will skip" >&2
else
  echo "qemu-user is not installed (as root: apt-get install qemu-user): the tests on an emulated AVX2 CPU will skip" >&2
fi
exit 0
