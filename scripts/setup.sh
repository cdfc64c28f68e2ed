#!/usr/bin/env bash
# Idempotent machine setup for PeftSharp.
# TorchSharp's native library (libtorch 2.10) needs GLIBCXX_3.4.32, i.e. libstdc++ from GCC 13+.
# Debian 12 ships GCC 12's libstdc++; where the symbol is missing we install libstdc++6 from
# Debian 13 (trixie) through an apt source pinned low, so nothing else is upgraded from trixie.
set -euo pipefail

need=GLIBCXX_3.4.32

find_libstdcxx() {
  local p
  for p in /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib/aarch64-linux-gnu/libstdc++.so.6 /usr/lib64/libstdc++.so.6 /usr/lib/libstdc++.so.6; do
    [ -e "$p" ] && { echo "$p"; return 0; }
  done
  ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 /{print $NF; exit}'
}

has_symbol() {
  local lib; lib=$(find_libstdcxx)
  [ -n "$lib" ] && grep -aq "$need" "$lib"
}

if has_symbol; then
  echo "setup: $need present in $(find_libstdcxx); nothing to do."
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "setup: $need is missing from $(find_libstdcxx) and installing libstdc++6 from Debian 13 needs root." >&2
  echo "       Run: sudo $0" >&2
  exit 1
fi

. /etc/os-release
if [ "${ID:-}" != debian ]; then
  echo "setup: $need is missing and this is not Debian ($PRETTY_NAME); install libstdc++ from GCC 13 or newer." >&2
  exit 1
fi

echo "setup: $need missing; installing libstdc++6 from Debian 13 (trixie), pinned low."
cat > /etc/apt/sources.list.d/peftsharp-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
cat > /etc/apt/preferences.d/peftsharp-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t trixie libstdc++6 >/dev/null
has_symbol || { echo "setup: installed libstdc++6 from trixie but $need is still missing" >&2; exit 1; }
echo "setup: done; $need now present."
