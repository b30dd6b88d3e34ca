//! End to end, as a user sees it (SPEC §8 "Bundles"): an image built from the static busybox,
//! a pod with an init container and two containers, `boot` against the real registry, then
//! `runc run` on each bundle the agent prepared.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::busybox::{Runc, boot_pod, busybox_image, busybox_image_with};
use common::fault::FaultEnv;
use common::{Root, agent, mounts_at, run};
use serde_json::json;

#[test]
fn boot_prepares_bundles_that_runc_runs() {
    let img = busybox_image();
    let e = FaultEnv::start(img, &["e2e/busybox"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/busybox:v1");
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = json!({
        "metadata": {"name": "web-0", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {
            "securityContext": {"supplementalGroups": [2000], "fsGroup": 3000},
            "initContainers": [{
                "name": "init", "image": image,
                "command": ["/bin/sh", "-c", "echo init $(GREETING) uid=$(id -u); touch /data/init-was-here"],
                "env": [{"name": "GREETING", "value": "hello"}],
            }],
            "containers": [
                {
                    "name": "c1", "image": image,
                    "args": ["echo c1 uid=$(id -u) gid=$(id -g) cwd=$(pwd) host=$(hostname) IMG=$IMG MINE=$MINE HOSTNAME=$HOSTNAME groups=$(id -G) MEM=$MEM; cat /data/init-was-here 2>/dev/null || echo no-init-file; echo c1-done > /dev/termination-log; grep -E '^Cap(Inh|Eff|Amb)' /proc/self/status"],
                    "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "MEM", "valueFrom": {"resourceFieldRef": {"containerName": "c2", "resource": "limits.memory", "divisor": "1Mi"}}}, {"name": "MINE", "value": "mine-$(GREETING)-$(POD)"}, {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                },
                {
                    "name": "c2", "image": image,
                    "command": ["/bin/sh", "-c", "echo c2 uid=$(id -u) cwd=$(pwd); touch /tmp/c2-file; grep -E '^Cap(Inh|Eff|Bnd|Amb)' /proc/self/status; cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us"],
                    "workingDir": "/data",
                    "securityContext": {"runAsUser": 0},
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                },
            ],
        },
    });
    let boot = || boot_pod(&root, &pod, &[]);
    let (r, rep) = boot();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("SECRET (valueFrom)"),
        "a skipped valueFrom is warned about: {}",
        r.stderr
    );
    let containers = rep["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 3);
    assert_eq!(
        containers[1]["unresolved"],
        json!(["env SECRET (valueFrom)"]),
        "what the agent cannot resolve is listed"
    );
    assert!(containers[2].get("unresolved").is_none());
    assert!(
        containers.iter().all(|c| c["status"] == "ready"),
        "{containers:?}"
    );
    let bundle = |name: &str| root.file(&format!("run/kci/bundles/{name}"));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle("c1").join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(config["hostname"], "web-0");
    let mounts: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle("c1").join("mounts.json")).unwrap()).unwrap();
    assert_eq!(mounts[0]["type"], "overlay");
    let slash = fs::metadata(bundle("c1").join("rootfs")).unwrap();
    assert_eq!(
        (slash.mode() & 0o7777, slash.uid(), slash.gid()),
        (0o751, 0, 1001),
        "the container's / has the image's root attributes"
    );

    let mut runc = Runc::new(root.file("runc-state"));
    assert_eq!(
        runc.run(&bundle("init"), "init").trim(),
        "init hello uid=1000"
    );
    // A non-root process holds no capability (CVE-2022-24769); root holds containerd's 14.
    assert_eq!(
        runc.run(&bundle("c1"), "c1").trim(),
        "c1 uid=1000 gid=1001 cwd=/home/app host=web-0 IMG=from-image MINE=mine-$(GREETING)-web-0 HOSTNAME=web-0 groups=1001 2000 3000 MEM=64\nno-init-file\n\
         CapInh:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000"
    );
    let c2 = runc.run(&bundle("c2"), "c2");
    let (head, limits) = c2
        .trim()
        .split_at(c2.trim().find("\n67108864").unwrap_or(0));
    assert_eq!(
        head,
        "c2 uid=0 cwd=/data\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n\
         CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000"
    );
    // Its limits, in its own cgroup (cgroup v2: cpu.max; v1: cfs_quota_us).
    assert!(
        ["\n67108864\n50000 100000", "\n67108864\n50000"].contains(&limits),
        "{c2}"
    );
    // The termination log: written by a non-root process, kept in the container's own
    // directory (as the kubelet reads it after the container ended).
    assert_eq!(
        fs::read_to_string(root.file("var/lib/kci/containers/c1/termination-log")).unwrap(),
        "c1-done\n"
    );
    // What a container writes lands in its own upper directory, never in a shared layer.
    let upper = |name: &str| root.file(&format!("var/lib/kci/containers/{name}/upper"));
    assert!(upper("c2").join("tmp/c2-file").exists());
    assert!(upper("init").join("data/init-was-here").exists());
    assert!(!upper("c1").join("tmp/c2-file").exists());
    let layers = root.file("var/lib/kci/layers/sha256");
    for l in fs::read_dir(&layers).unwrap() {
        let fs_dir = l.unwrap().path().join("fs");
        assert!(
            !fs_dir.join("tmp/c2-file").exists() && !fs_dir.join("data/init-was-here").exists()
        );
    }

    // A second boot leaves the bundles and their mounts as they are, config.json byte for
    // byte (its capability sets are in a fixed order).
    let before: Vec<Vec<u8>> = ["init", "c1", "c2"]
        .iter()
        .map(|n| fs::read(bundle(n).join("config.json")).unwrap())
        .collect();
    let (r, _) = boot();
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (n, b) in ["init", "c1", "c2"].iter().zip(&before) {
        assert!(
            fs::read(bundle(n).join("config.json")).unwrap() == *b,
            "{n}: config.json changed on a rerun"
        );
    }
    assert!(
        runc.run(&bundle("c2"), "c2-again")
            .starts_with("c2 uid=0 cwd=/data\nCapInh:")
    );
}

/// As the systemd unit runs it: `boot --no-mount` writes mounts.json and mounts nothing, then
/// `mount-bundles` mounts every rootfs from it (a rerun leaves the mounts alone); a
/// mounts.json that names a directory outside the agent's own is refused.
#[test]
fn boot_without_mounts_then_mount_bundles() {
    let img = busybox_image();
    let e = FaultEnv::start(img, &["e2e/nomount"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/nomount:v1");
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = json!({
        "metadata": {"name": "svc", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {"containers": [
            {"name": "one", "image": image, "args": ["echo one $(id -u)"]},
            {"name": "two", "image": image, "args": ["echo two"]},
            {"name": "gone", "image": format!("{reg}/e2e/nomount:missing")},
        ]},
    });
    let spec = root.file("pod.json");
    fs::write(&spec, pod.to_string()).unwrap();
    let boot = |extra: &[&str]| {
        let mut args = vec![
            "boot",
            "--root",
            root.arg(),
            "--spec",
            spec.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&mut agent(&args))
    };
    let report = root.file("report.json");
    let r = boot(&["--no-mount", "--report", report.to_str().unwrap()]);
    // The image of "gone" does not exist: that container fails, the others are prepared.
    assert_eq!(r.code, 4, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let status: Vec<(&str, &str)> = rep["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        vec![("one", "ready"), ("two", "ready"), ("gone", "failed"),]
    );
    let gone = rep["containers"][2]["error"].as_str().unwrap();
    assert!(gone.contains("was not pulled"), "{gone}");
    let bundle = |name: &str| root.file(&format!("run/kci/bundles/{name}"));
    assert!(bundle("one").join("mounts.json").exists());
    assert_eq!(
        fs::read_dir(bundle("one").join("rootfs")).unwrap().count(),
        0,
        "not mounted"
    );

    // A planted mounts.json pointing at the machine's /etc is refused; the other is mounted.
    let good = fs::read_to_string(bundle("two").join("mounts.json")).unwrap();
    let evil = good.replacen("lowerdir=", "lowerdir=/etc:", 1);
    fs::write(bundle("two").join("mounts.json"), &evil).unwrap();
    let mount = || run(&mut agent(&["mount-bundles", "--root", root.arg()]));
    let r = mount();
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("not a layer of"), "{}", r.stderr);
    fs::write(bundle("two").join("mounts.json"), &good).unwrap();
    // So is a pod mount plan that names a place outside the pod's directory.
    let plan = root.file("run/kci/pod/mounts.json");
    let pod_plan = fs::read_to_string(&plan).unwrap();
    assert!(pod_plan.contains("\"shm\""), "{pod_plan}");
    fs::write(&plan, pod_plan.replace("\"shm\"", "\"../../../etc\"")).unwrap();
    let r = mount();
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("not a mount of the pod's own"),
        "{}",
        r.stderr
    );
    assert_eq!(mounts_at(&root.file("etc")), 0);
    fs::write(&plan, &pod_plan).unwrap();
    let r = mount();
    assert_eq!(r.code, 0, "{}", r.stderr);
    for place in ["shm", "ns/ipc"] {
        assert_eq!(mounts_at(&root.file(&format!("run/kci/pod/{place}"))), 1);
    }
    let r = mount();
    assert_eq!(r.code, 0, "a rerun leaves the mounts alone: {}", r.stderr);
    let mut runc = Runc::new(root.file("runc-state"));
    assert_eq!(runc.run(&bundle("one"), "one").trim(), "one 1000");
    assert_eq!(runc.run(&bundle("two"), "two").trim(), "two");
}

/// `runAsNonRoot` with a container that would run as root: that container fails (as the
/// kubelet refuses to start it), the others of the pod are prepared; a pod-level
/// `runAsNonRoot` with the image's non-root user is fine.
#[test]
fn run_as_non_root_refuses_a_root_container_only() {
    let img = busybox_image();
    let e = FaultEnv::start(img, &["e2e/nonroot"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/nonroot:v1");
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = json!({
        "metadata": {"name": "strict", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [
                {"name": "app", "image": image},
                {"name": "root", "image": image, "securityContext": {"runAsUser": 0}},
            ],
        },
    });
    let (r, rep) = boot_pod(&root, &pod, &["--no-mount"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let c = rep["containers"].as_array().unwrap();
    assert_eq!(
        (c[0]["name"].as_str(), c[0]["status"].as_str()),
        (Some("app"), Some("ready"))
    );
    assert_eq!(c[1]["status"], "failed");
    let err = c[1]["error"].as_str().unwrap();
    assert!(
        err.contains("runAsNonRoot") && err.contains("uid 0"),
        "{err}"
    );
}

/// `emptyDir` volumes are the pod's: what one container writes another reads; `subPath`
/// and `readOnly` are honoured, a `subPath` that climbs out is refused; other volume types
/// are not mounted and are listed as unresolved.
#[test]
fn empty_dir_volumes_are_shared_by_the_pods_containers() {
    let img = busybox_image();
    let e = FaultEnv::start(img, &["e2e/volumes"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/volumes:v1");
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = json!({
        "metadata": {"name": "side", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "status": {"podIP": "10.20.30.40"},
        "spec": {
            "hostname": "side-h",
            "hostAliases": [{"ip": "10.1.1.1", "hostnames": ["db.local", "cache.local"]}],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "app-config"}},
            ],
            "containers": [
                {"name": "writer", "image": image, "securityContext": {"runAsUser": 0},
                 "command": ["/bin/sh", "-c", "echo hello > /work/note; mkdir -p /work/deep/er; echo deep > /work/deep/er/f"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "reader", "image": image, "securityContext": {"runAsUser": 0},
                 "command": ["/bin/sh", "-c", "cat /shared/note /sub/f; touch /sub/x 2>/dev/null || echo read-only; cat /etc/hostname /etc/hosts; hostname"],
                 "volumeMounts": [
                    {"name": "work", "mountPath": "/shared"},
                    {"name": "work", "mountPath": "/sub", "subPath": "deep/er", "readOnly": true},
                    {"name": "cfg", "mountPath": "/etc/app"},
                 ]},
                {"name": "climber", "image": image,
                 "volumeMounts": [{"name": "work", "mountPath": "/w", "subPath": "../../etc"}]},
                {"name": "planted", "image": image,
                 "volumeMounts": [{"name": "work", "mountPath": "/w", "subPath": "evil/inner"}]},
            ],
        },
    });
    // A link a container of an earlier run left in the volume, to the machine's /etc.
    let work = root.file("run/kci/pod/volumes/work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink("/etc", work.join("evil")).unwrap();
    let (r, rep) = boot_pod(&root, &pod, &[]);
    assert_ne!(r.code, 0, "the climber fails: {}", r.stderr);
    let c = rep["containers"].as_array().unwrap();
    assert_eq!(
        (c[0]["status"].as_str(), c[1]["status"].as_str()),
        (Some("ready"), Some("ready"))
    );
    assert_eq!(
        c[1]["unresolved"],
        json!(["volume cfg (configMap) at /etc/app"])
    );
    for bad in [&c[2], &c[3]] {
        assert_eq!(bad["status"], "failed");
        assert!(bad["error"].as_str().unwrap().contains("subPath"), "{bad}");
    }
    assert!(
        !Path::new("/etc/inner").exists(),
        "nothing was made through the planted link"
    );
    let bundle = |name: &str| root.file(&format!("run/kci/bundles/{name}"));
    let mut runc = Runc::new(root.file("runc-state"));
    assert_eq!(runc.run(&bundle("writer"), "writer"), "");
    assert_eq!(
        runc.run(&bundle("reader"), "reader"),
        // The pod's names, as the kubelet writes them.
        "hello\ndeep\nread-only\nside-h\n\
         # Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         10.20.30.40\tside-h\n\n# Entries added by HostAliases.\n\
         10.1.1.1\tdb.local\tcache.local\nside-h\n"
    );
    assert_eq!(
        fs::read_to_string(root.file("run/kci/pod/volumes/work/note")).unwrap(),
        "hello\n"
    );
}

/// SPEC §10 end to end: a pod of several containers whose commands print what they see,
/// each line as Kubernetes (containerd's CRI, the kubelet) gives it: capabilities for the
/// default context, add/drop, non-root with allowPrivilegeEscalation false, privileged; the
/// default PATH; the FQDN of a subdomain pod in /etc/hosts; resolv.conf for ClusterFirst with
/// the cluster DNS; one IPC namespace and one /dev/shm for the pod; a memory emptyDir as a
/// tmpfs of its sizeLimit. A second boot leaves one mount at each place.
#[test]
fn a_pod_runs_as_kubernetes_runs_it() {
    // No Env and no User in the image: containerd's default PATH, uid 0.
    let img = busybox_image_with(json!({"Entrypoint": ["/bin/sh", "-c"]}));
    let e = FaultEnv::start(img, &["e2e/k8s"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/k8s:v1");
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let status = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status";
    let pod = json!({
        "metadata": {"name": "web", "namespace": "team",
                     "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "status": {"podIP": "10.0.0.7"},
        "spec": {
            "subdomain": "sub",
            "hostAliases": [{"ip": "10.1.1.1", "hostnames": ["db.team"]}],
            "dnsConfig": {"searches": ["extra.test"], "options": [{"name": "edns0"}]},
            "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
            "containers": [
                {"name": "plain", "image": image,
                 "args": [format!("{status}; echo PATH=$PATH HOSTNAME=$HOSTNAME; cat /etc/hostname /etc/hosts /etc/resolv.conf; readlink /proc/self/ns/ipc; echo shared > /dev/shm/note; echo mem > /mem/note; grep ' /mem ' /proc/self/mountinfo | grep -o 'tmpfs tmpfs.*'")],
                 "volumeMounts": [{"name": "mem", "mountPath": "/mem"}]},
                {"name": "caps", "image": image, "args": [status],
                 "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN", "CAP_KILL"]}}},
                {"name": "user", "image": image,
                 "args": [format!("{status}; id -u; cat /dev/shm/note /mem/note; readlink /proc/self/ns/ipc")],
                 "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": false},
                 "volumeMounts": [{"name": "mem", "mountPath": "/mem", "readOnly": true}]},
                {"name": "priv", "image": image,
                 "args": [format!("{status}; test -c /dev/kmsg && echo kmsg; grep -q ' /sys rw' /proc/self/mountinfo && echo sys-rw")],
                 "securityContext": {"privileged": true}},
            ],
        },
    });
    let (r, rep) = boot_pod(&root, &pod, &["--cluster-dns", "10.96.0.10"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        rep["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "ready"),
        "{rep}"
    );
    let bundle = |name: &str| root.file(&format!("run/kci/bundles/{name}"));
    let mut runc = Runc::new(root.file("runc-state"));
    let host_ipc = fs::read_link("/proc/self/ns/ipc").unwrap();
    let plain = runc.run(&bundle("plain"), "plain");
    let mut lines = plain.lines();
    let mut next = || lines.next().unwrap_or_default().to_string();
    assert_eq!(next(), "CapEff:\t00000000a80425fb");
    assert_eq!(next(), "NoNewPrivs:\t0");
    assert_eq!(
        next(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOSTNAME=web"
    );
    assert_eq!(next(), "web");
    let hosts: Vec<String> = (0..10).map(|_| next()).collect();
    assert_eq!(
        hosts.join("\n"),
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         10.0.0.7\tweb.sub.team.svc.cluster.local\tweb\n\n# Entries added by HostAliases."
    );
    assert_eq!(next(), "10.1.1.1\tdb.team");
    assert_eq!(
        next(),
        "search team.svc.cluster.local svc.cluster.local cluster.local extra.test"
    );
    assert_eq!(next(), "nameserver 10.96.0.10");
    assert_eq!(next(), "options ndots:5 edns0");
    let ipc = next();
    assert!(ipc.starts_with("ipc:["), "{plain}");
    assert_ne!(
        Path::new(&ipc),
        host_ipc,
        "the pod has an IPC namespace of its own"
    );
    let tmpfs = next();
    assert!(
        tmpfs.contains("size=16384k") && tmpfs.contains("mode=777"),
        "a memory emptyDir is a tmpfs of its sizeLimit: {tmpfs}"
    );
    // add NET_ADMIN, drop CHOWN and KILL.
    assert_eq!(
        runc.run(&bundle("caps"), "caps"),
        "CapEff:\t00000000a80435da\nNoNewPrivs:\t0\n"
    );
    // Non-root: no capability; allowPrivilegeEscalation false: no_new_privs. The pod's
    // /dev/shm, memory volume and IPC namespace are the same in every container.
    assert_eq!(
        runc.run(&bundle("user"), "user"),
        format!("CapEff:\t0000000000000000\nNoNewPrivs:\t1\n1000\nshared\nmem\n{ipc}\n")
    );
    // Privileged: every capability the agent holds, the instance's devices, /sys writable.
    let own = fs::read_to_string("/proc/self/status").unwrap();
    let bounding = own
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .unwrap();
    let kmsg = if Path::new("/dev/kmsg").exists() {
        "kmsg\n"
    } else {
        ""
    };
    assert_eq!(
        runc.run(&bundle("priv"), "priv"),
        format!("CapEff:\t{bounding}\nNoNewPrivs:\t0\n{kmsg}sys-rw\n")
    );

    // A second boot: the same bytes, one mount at each place.
    let names = ["plain", "caps", "user", "priv"];
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(bundle(n).join("config.json")).unwrap())
        .collect();
    let (r, _) = boot_pod(&root, &pod, &["--cluster-dns", "10.96.0.10"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (n, b) in names.iter().zip(&before) {
        assert!(
            fs::read(bundle(n).join("config.json")).unwrap() == *b,
            "{n}: config.json changed on a rerun"
        );
        assert_eq!(mounts_at(&bundle(n).join("rootfs")), 1, "{n}");
    }
    for place in ["shm", "ns/ipc", "volumes/mem"] {
        assert_eq!(
            mounts_at(&root.file(&format!("run/kci/pod/{place}"))),
            1,
            "{place}"
        );
    }
}

/// resolv.conf for dnsPolicy None (exactly dnsConfig) and Default (the instance's file as
/// §3 wrote it, dnsConfig appended), and ClusterFirst without a cluster DNS (as Default,
/// warned); without a pod IP in the pod object, /etc/hosts names the instance's address.
#[test]
fn resolv_conf_follows_the_dns_policy() {
    let img = busybox_image_with(json!({"Entrypoint": ["/bin/sh", "-c"]}));
    let e = FaultEnv::start(img, &["e2e/dns"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/e2e/dns:v1");
    // The instance's primary address, as `ip route` tells it.
    let route = Command::new("ip")
        .args(["-o", "route", "get", "192.0.2.1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let src = route
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .map(|ip| format!("{ip}\tdns\n"))
        .unwrap_or_default();
    for (policy, config, want) in [
        (
            "None",
            json!({"nameservers": ["10.9.9.9"], "searches": ["x.test"]}),
            "search x.test\nnameserver 10.9.9.9\n",
        ),
        (
            "Default",
            json!({"nameservers": ["10.9.9.9"], "options": [{"name": "ndots", "value": "1"}]}),
            "search lan\nnameserver 127.0.0.1\nnameserver 10.9.9.9\noptions ndots:1\n",
        ),
        (
            "ClusterFirst",
            json!({"nameservers": ["10.9.9.9"]}),
            "search lan\nnameserver 127.0.0.1\nnameserver 10.9.9.9\n",
        ),
    ] {
        let root = Root::new(
            "127.0.0.1\tlocalhost\n",
            "nameserver 127.0.0.1\nsearch lan\n",
        );
        let pod = json!({
            "metadata": {"name": "dns", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
            "spec": {"dnsPolicy": policy, "dnsConfig": config, "containers": [
                {"name": "c", "image": image, "args": ["cat /etc/resolv.conf; grep -v ':' /etc/hosts | grep -v '^#'"]},
            ]},
        });
        let (r, _) = boot_pod(&root, &pod, &[]);
        assert_eq!(r.code, 0, "{policy}: {}", r.stderr);
        assert_eq!(
            r.stderr.contains("KCI_CLUSTER_DNS"),
            policy == "ClusterFirst",
            "{policy}: {}",
            r.stderr
        );
        let mut runc = Runc::new(root.file("runc-state"));
        assert_eq!(
            runc.run(&root.file("run/kci/bundles/c"), policy),
            format!("{want}127.0.0.1\tlocalhost\n{src}"),
            "{policy}"
        );
    }
}
