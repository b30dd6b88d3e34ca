//! A container image made of the static busybox, and `runc` containers that go with the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::images::{Blob, image_with_config, sha256};
use super::tarball::{dir, file, symlink, tar};
use serde_json::json;

/// Containers started by a test, deleted when it ends (even on failure).
pub struct Runc {
    pub state: PathBuf,
    pub ids: Vec<String>,
}

impl Runc {
    /// No container yet; their state under `state`.
    pub fn new(state: PathBuf) -> Runc {
        Runc {
            state,
            ids: Vec::new(),
        }
    }

    /// `runc run` of a bundle in the foreground; its stdout.
    pub fn run(&mut self, bundle: &Path, name: &str) -> String {
        let id = format!("kci-test-{}-{name}", std::process::id());
        self.ids.push(id.clone());
        let out = Command::new("runc")
            .arg("--root")
            .arg(&self.state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .output()
            .expect("runc is missing: run scripts/setup.sh");
        assert!(
            out.status.success(),
            "runc run {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "-f", id])
                .output();
        }
    }
}

pub fn busybox_image() -> super::images::Image {
    busybox_image_with(json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default-cmd"],
        "Env": ["PATH=/bin", "IMG=from-image"],
        "WorkingDir": "/home/app",
        "User": "app",
    }))
}

/// The static busybox with its applets, run as `config` says.
pub fn busybox_image_with(config: serde_json::Value) -> super::images::Image {
    let busybox =
        fs::read("/bin/busybox").expect("busybox-static is missing: run scripts/setup.sh");
    let mut entries = vec![
        // The image's root, as the container's `/` must show it (not the upper directory's).
        dir("./").mode(0o751).owner(0, 1001),
        dir("bin"),
        file("bin/busybox", &busybox).mode(0o755),
        dir("etc"),
        file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        ),
        file("etc/group", b"root:x:0:\nstaff:x:1001:app\n"),
        dir("home"),
        dir("home/app").owner(1000, 1001),
        dir("data").mode(0o777),
        dir("tmp").mode(0o1777),
    ];
    for applet in [
        "sh", "id", "touch", "hostname", "env", "cat", "grep", "readlink", "test", "echo",
    ] {
        entries.push(symlink(&format!("bin/{applet}"), "busybox"));
    }
    let layer_tar = tar(&entries);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer_tar).unwrap();
    let mut layer = Blob::new(
        gz.finish().unwrap(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    layer.diff_id = sha256(&layer_tar);
    image_with_config(vec![layer], "amd64", false, config)
}

/// `boot` of `pod` (written to the root's `pod.json`) with a report; the run and the report.
pub fn boot_pod(
    root: &super::Root,
    pod: &serde_json::Value,
    extra: &[&str],
) -> (super::Run, serde_json::Value) {
    let spec = root.file("pod.json");
    fs::write(&spec, pod.to_string()).unwrap();
    let report = root.file("report.json");
    let mut args = vec![
        "boot",
        "--root",
        root.arg(),
        "--spec",
        spec.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = super::run(&mut super::agent(&args));
    let rep = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    (r, rep)
}
