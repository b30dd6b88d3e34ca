#!/usr/bin/env bash
# The main job, end to end on this machine: starts two real registries on loopback (plain HTTP,
# and HTTPS with a self-signed certificate reached through a host alias), seeds a demo image,
# and runs `kci-pull-agent boot` for a pod that uses a host alias, an HTTP registry and an
# insecure registry, in a sandbox root (never the machine's /etc). Shows what it wrote and the
# report, starts the pod's container with runc from the bundle boot prepared; then builds an
# image cache of the instance's images and boots a fresh instance from it; then stops and
# unmounts what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q
bin=$PWD/target/release/kci-pull-agent

work=$(mktemp -d /tmp/kci-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  runc --root "$work/runc" delete -f "kci-demo-app-$$" >/dev/null 2>&1 || true
  runc --root "$work/runc" delete -f "kci-demo-cached-$$" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  # The containers' rootfs overlays that boot mounted under the demo root.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port" >&2; exit 1
}
wait_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
  echo "registry on port $1 did not start" >&2; exit 1
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

http_port=$(free_port)
tls_port=$(free_port)
step "Starting registries: http://127.0.0.1:$http_port and https://demo-registry.internal:$tls_port (self-signed)"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=demo-registry.internal" \
  -addext "subjectAltName=DNS:demo-registry.internal" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
for kind in http tls; do
  port=$http_port
  tls=""
  if [[ $kind == tls ]]; then
    port=$tls_port
    tls=$'  tls:\n    certificate: '"$work/tls.crt"$'\n    key: '"$work/tls.key"
  fi
  cat >"$work/$kind.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
  secret: kci-demo
$tls
YML
  docker-registry serve "$work/$kind.yml" >"$work/$kind.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
done

step "Building demo/hello:v1 from the static busybox (umoci) and pushing it (skopeo)"
umoci init --layout "$work/image"
umoci new --image "$work/image:v1"
umoci unpack --image "$work/image:v1" "$work/image-bundle" >/dev/null
rootfs=$work/image-bundle/rootfs
mkdir -p "$rootfs/bin" "$rootfs/etc/kci-demo"
cp /bin/busybox "$rootfs/bin/"
for applet in sh id hostname cat wget; do ln -s busybox "$rootfs/bin/$applet"; done
echo "hello from the demo image" >"$rootfs/etc/kci-demo/hello.txt"
printf 'root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000::/:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ndemo:x:1000:\n' >"$rootfs/etc/group"
umoci repack --image "$work/image:v1" "$work/image-bundle"
umoci config --image "$work/image:v1" --config.entrypoint /bin/sh --config.entrypoint -c \
  --config.cmd 'cat /etc/kci-demo/hello.txt' --config.env PATH=/bin --config.user demo
skopeo copy -q --dest-tls-verify=false "oci:$work/image:v1" "docker://127.0.0.1:$http_port/demo/hello:v1"

root=$work/root
mkdir -p "$root/etc" "$root/run/kci"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf 'nameserver 127.0.0.1\nsearch lan\n' >"$root/etc/resolv.conf"
sed -e "s/@HTTP_PORT@/$http_port/g" -e "s/@TLS_PORT@/$tls_port/g" testdata/demo/pod.json.in \
  >"$root/run/kci/pod.json"
set -a
# shellcheck disable=SC1091
. testdata/demo/agent.env
set +a

step "kci-pull-agent explain --root \$root   (pod from \$root/run/kci/pod.json)"
"$bin" explain --root "$root" --spec "$root/run/kci/pod.json"

step "kci-pull-agent boot --root \$root"
set +e
t0=$(date +%s%N)
"$bin" boot --root "$root"
code=$?
t1=$(date +%s%N)
set -e
echo "exit code: $code"

step "\$root/etc/hosts"
cat "$root/etc/hosts"
step "\$root/etc/resolv.conf"
cat "$root/etc/resolv.conf"
step "\$root/run/kci/pull-report.json"
cat "$root/run/kci/pull-report.json"

step "kci-pull-agent flush-layers --root \$root   (kci-layer-flush.service, once the pod is up)"
ls "$root/var/lib/kci/layers" | grep unflushed || true
"$bin" flush-layers --root "$root"
ls "$root/var/lib/kci/layers" | grep unflushed || echo "(no unflushed marker left)"

step "kci-pull-agent boot --root \$root   (again: nothing changes, images present)"
"$bin" boot --root "$root" 2>&1 | grep -E "image\(s\)|network file" && echo "exit code: 0"
step "Bad input: an insecure registry with a path (exit 2, nothing written)"
set +e
"$bin" boot --root "$root" --insecure-registry demo-registry.internal/team
echo "exit code: $?"
set -e
step "The bundles boot prepared: \$root/run/kci/bundles/app/config.json (process)"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["process"]; print(json.dumps({k: p[k] for k in ("args","env","cwd","user")}, indent=2))' \
  "$root/run/kci/bundles/app/config.json"
# KCI_DEMO_KEEP=FILE keeps a copy of the app's whole config.json.
if [[ -n ${KCI_DEMO_KEEP:-} ]]; then cp "$root/run/kci/bundles/app/config.json" "$KCI_DEMO_KEEP"; fi
step "runc run --bundle \$root/run/kci/bundles/app   (the pod's container, started as prepared)"
runc --root "$work/runc" run --bundle "$root/run/kci/bundles/app" "kci-demo-app-$$"
echo "exit code: $?"
runc --root "$work/runc" delete -f "kci-demo-app-$$" >/dev/null 2>&1 || true

step "An image cache: kci-pull-agent cache build from this instance's store (one EROFS image)"
"$bin" cache build -q --root "$root" --spec "$root/run/kci/pod.json" --output "$work/fleet.erofs"
ls -la "$work/fleet.erofs"
step "A fresh instance boots with it: kci-pull-agent boot --root \$root2 --image-cache fleet.erofs"
root2=$work/root2
mkdir -p "$root2/etc" "$root2/run/kci"
cp "$root/run/kci/pod.json" "$root2/run/kci/pod.json"
printf '127.0.0.1\tlocalhost\n' >"$root2/etc/hosts"
printf 'nameserver 127.0.0.1\n' >"$root2/etc/resolv.conf"
t2=$(date +%s%N)
"$bin" boot -q --root "$root2" --image-cache "$work/fleet.erofs"
t3=$(date +%s%N)
echo "ready (network files, bundles mounted) in $(((t3 - t2) / 1000000)) ms; the first boot above took $(((t1 - t0) / 1000000)) ms"
python3 -c 'import json,sys
for i in json.load(open(sys.argv[1]))["images"]:
    print(i["image"], i["status"], "layers from:", [l["from"] for l in i["layers"]], "cache:", i.get("cache"))' \
  "$root2/run/kci/pull-report.json"
findmnt -rn -o TARGET,FSTYPE | grep "^$root2/run/kci/caches" || true
runc --root "$work/runc" run --bundle "$root2/run/kci/bundles/app" "kci-demo-cached-$$" >"$work/cached.out"
head -3 "$work/cached.out"
runc --root "$work/runc" delete -f "kci-demo-cached-$$" >/dev/null 2>&1 || true
exit "$code"
