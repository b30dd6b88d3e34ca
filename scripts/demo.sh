#!/usr/bin/env bash
# The main job, shown on a pod from testdata/ in a sandbox root (never the machine's /etc):
# the virtual-kubelet environment plus the pod's annotations are validated and merged,
# `explain` shows how each image's registry would be reached, and `network` writes
# <root>/etc/hosts and <root>/etc/resolv.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q
bin=target/release/kci-pull-agent
case=testdata/cases/basic

root=$(mktemp -d /tmp/kci-demo.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc"
cp "$case/hosts.in" "$root/etc/hosts"
cp "$case/resolv.conf.in" "$root/etc/resolv.conf"

# The VK-level settings, as the systemd unit would load them from /etc/kci/agent.env.
set -a
# shellcheck disable=SC1090,SC1091
. "$case/env"
set +a

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step kci-pull-agent explain --spec "$case/pod.json" --root "$root"
"$bin" explain --spec "$case/pod.json" --root "$root"

step kci-pull-agent explain --spec "$case/pod.json" --output json
"$bin" explain --spec "$case/pod.json" --output json

step kci-pull-agent network --dry-run --spec "$case/pod.json" --root "$root"
"$bin" network --dry-run --spec "$case/pod.json" --root "$root"

step kci-pull-agent network --spec "$case/pod.json" --root "$root"
"$bin" network --spec "$case/pod.json" --root "$root"
step cat "$root/etc/hosts"
cat "$root/etc/hosts"
step cat "$root/etc/resolv.conf"
cat "$root/etc/resolv.conf"

step kci-pull-agent network --spec "$case/pod.json" --root "$root" "   # again: nothing changes"
"$bin" network --spec "$case/pod.json" --root "$root"

step kci-pull-agent explain --http-registry "reg.example.com/team" nginx "   # bad input: exit 2"
set +e
"$bin" explain --http-registry "reg.example.com/team" nginx
echo "exit code: $?"
