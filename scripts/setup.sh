#!/usr/bin/env bash
# Installs what the test suite and the demo need on a fresh Debian machine (run as root).
# Idempotent: packages already present are not touched. Never starts system services.
set -euo pipefail

need_pkgs=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
need unshare util-linux
need script bsdutils                   # a pseudo-terminal for the progress-bar test
need umoci umoci                       # the reference unpacker the layer tests compare against
need runc runc                         # starts the bundles in the end-to-end test and the demo
# A static busybox: the test image's only binary (runs in any rootfs).
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
need mount mount
need systemd-analyze systemd
need docker-registry docker-registry   # the CNCF distribution registry, for integration tests
need openssl openssl
need htpasswd apache2-utils            # bcrypt htpasswd files for the Basic-auth registry
need skopeo skopeo                     # reads the store in an interoperability test; bench peer
need curl curl                         # the benchmark's streaming baseline
need containerd containerd             # the time-to-ready benchmark's peer (a private instance)
need unpigz pigz                       # the benchmark's local `unpigz | tar` reference
need zstd zstd
need mkfs.ext4 e2fsprogs               # the benchmark's fresh journaled ext4 on a loop device
need losetup mount
need mkfs.erofs erofs-utils            # `cache build` writes an EROFS image (SPEC §12)
[[ -x /usr/bin/time ]] || need_pkgs+=(time)   # GNU time: peak RSS in the benchmark

if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${need_pkgs[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${need_pkgs[*]}" >&2
  # Keep package scripts from starting services (Debian's docker-registry would listen on
  # :5000 on every interface): policy-rc.d exit 101 forbids starts during installation.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian's docker-registry ships a service listening on :5000 on every interface; the tests
# run their own instances on loopback, so keep the packaged one off.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# skopeo refuses to run without a signature policy; accept anything (tests use loopback only).
if command -v skopeo >/dev/null 2>&1 && [[ ! -e /etc/containers/policy.json ]] && [[ $(id -u) -eq 0 ]]; then
  mkdir -p /etc/containers
  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >/etc/containers/policy.json
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; this project needs Rust 1.85 or newer (rustup)" >&2
  exit 1
fi
