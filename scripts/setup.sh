#!/usr/bin/env bash
# Idempotent machine setup for PeftSharp.
#   scripts/setup.sh          libstdc++ new enough for TorchSharp (below)
#   scripts/setup.sh --mpi    also Open MPI (openmpi-bin, libopenmpi-dev) for `mpirun ... peft train`
# TorchSharp's native library (libtorch 2.10) needs GLIBCXX_3.4.32, i.e. libstdc++ from GCC 13+.
# Debian 12 ships GCC 12's libstdc++; where the symbol is missing we install libstdc++6 from
# Debian 13 (trixie) through an apt source pinned low, so nothing else is upgraded from trixie.
# The source's URI is the one this machine's apt already uses for Debian (no mirror is named here).
set -euo pipefail

args="$*"
want_mpi=0
for arg in "$@"; do
  case "$arg" in
    --mpi) want_mpi=1 ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (expected --mpi)" >&2; exit 2 ;;
  esac
done

need=GLIBCXX_3.4.32
export DEBIAN_FRONTEND=noninteractive

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

require_root_debian() { # $1: what we are about to install
  if [ "$(id -u)" != 0 ]; then
    echo "setup: installing $1 needs root. Run: sudo $0 $args" >&2
    exit 1
  fi
  . /etc/os-release
  if [ "${ID:-}" != debian ]; then
    echo "setup: this is not Debian ($PRETTY_NAME); install $1 with your distribution's packages." >&2
    exit 1
  fi
}

# Suites this machine's apt reads (one per line), from every configured index target.
configured_suites() {
  apt-get indextargets --format '$(RELEASE)' 2>/dev/null | sort -u
}

# URI of the Debian archive this machine's apt is configured with: the Repo-URI of a Debian
# (not Debian-Security) index target; before the first `apt-get update` the Release files that
# name the origin are absent, so fall back to the target whose suite is the system's codename,
# then to the sources files themselves (deb822 .sources, then one-line sources.list).
debian_uri() {
  local codename uri
  codename=$(. /etc/os-release; echo "${VERSION_CODENAME:-}")
  uri=$(apt-get indextargets --format '$(ORIGIN)|$(LABEL)|$(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
        | awk -F'|' '$1=="Debian" && $2=="Debian" {print $3; exit}')
  [ -z "$uri" ] && uri=$(apt-get indextargets --format '$(RELEASE)|$(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
        | awk -F'|' -v c="$codename" '$1==c || $1=="bookworm" || $1=="trixie" {print $2; exit}')
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
      /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )(bookworm|trixie)( |$)/) { print u; exit } u=""; s=""; next }
      /^URIs:/   { u=$2 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); s=$0 }
      END { if (u != "" && s ~ /(^| )(bookworm|trixie)( |$)/) print u }' | head -1)
  fi
  [ -z "$uri" ] && uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i ~ /:\/\//) {print $i; exit}}' \
        /etc/apt/sources.list 2>/dev/null | head -1)
  echo "${uri%/}"
}

ensure_libstdcxx() {
  if has_symbol; then
    echo "setup: $need present in $(find_libstdcxx)."
    return 0
  fi
  require_root_debian "libstdc++6 from Debian 13"
  echo "setup: $need missing from $(find_libstdcxx); installing libstdc++6 from Debian 13 (trixie), pinned low."
  if ! configured_suites | grep -qx trixie; then
    local uri; uri=$(debian_uri)
    if [ -z "$uri" ]; then
      echo "setup: found no Debian source in apt's configuration (apt-get indextargets, /etc/apt/sources.list.d/*.sources, /etc/apt/sources.list); add one, then rerun." >&2
      exit 1
    fi
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" > /etc/apt/sources.list.d/peftsharp-trixie.sources
  fi
  cat > /etc/apt/preferences.d/peftsharp-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  apt-get update -qq
  apt-get install -y -qq -t trixie libstdc++6 >/dev/null
  has_symbol || { echo "setup: installed libstdc++6 from trixie but $need is still missing" >&2; exit 1; }
  echo "setup: $need now present."
}

has_mpi() {
  command -v mpirun >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libmpi\.so\.40 '
}

ensure_mpi() {
  if has_mpi; then
    echo "setup: Open MPI present ($(mpirun --version 2>/dev/null | head -1))."
    return 0
  fi
  require_root_debian "Open MPI (openmpi-bin, libopenmpi-dev)"
  echo "setup: installing Open MPI from Debian (openmpi-bin, libopenmpi-dev)."
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
  has_mpi || { echo "setup: installed openmpi-bin but mpirun or libmpi.so.40 is still missing" >&2; exit 1; }
  echo "setup: Open MPI now present ($(mpirun --version 2>/dev/null | head -1))."
}

ensure_libstdcxx
[ "$want_mpi" = 1 ] && ensure_mpi
echo "setup: done."
