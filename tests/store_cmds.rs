//! The store by hand (SPEC §11): `images`, `rmi`, `prune`, `df` on stores a real pull filled,
//! a prune killed with SIGKILL at many points, and `completions`.

mod common;

use std::fs;
use std::process::Command;

use common::fault::FaultEnv;
use common::images::{Pusher, block_on, image, image_with, layer_of, tar_of};
use common::{Root, agent, run};
use serde_json::{Value, json};

/// A layer of `n` small files (slow enough to remove that a kill lands inside a prune).
fn many_files_layer(seed: u64, n: usize) -> common::images::Blob {
    let names: Vec<String> = (0..n).map(|i| format!("d{seed}/f{i}")).collect();
    let data = format!("{seed}").into_bytes();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
    layer_of(
        &tar_of(&files),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )
}

struct Setup {
    _e: FaultEnv,
    reg: String,
}

impl Setup {
    fn new() -> Setup {
        let e = FaultEnv::start(image(31, &[4_000, 9_000], "amd64", false), &["by/a"]);
        let reg = e.registry.addr();
        let b = image_with(
            vec![many_files_layer(1, 3000), many_files_layer(2, 3000)],
            "amd64",
            false,
        );
        block_on(Pusher::new(&reg).image("by/b", "v1", &b));
        Setup { _e: e, reg }
    }

    fn agent(&self, root: &Root, args: &[&str]) -> common::Run {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--root", root.arg()]);
        run(&mut agent(&full))
    }

    /// Pulls both images into `root`'s stores and prepares a bundle for `by/a`.
    fn fill(&self, root: &Root) {
        let a = format!("{}/by/a:v1", self.reg);
        let b = format!("{}/by/b:v1", self.reg);
        let r = self.agent(root, &["pull", "--http-registry", &self.reg, &a, &b]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": a, "command": ["/x"]}]},
        });
        let spec = root.file("pod.json");
        fs::write(&spec, pod.to_string()).unwrap();
        let r = self.agent(
            root,
            &[
                "prepare",
                "--spec",
                spec.to_str().unwrap(),
                "--http-registry",
                &self.reg,
                "--no-mount",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn images_rmi_prune_and_df() {
    let s = Setup::new();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    s.fill(&root);
    let (a, b) = (format!("{}/by/a:v1", s.reg), format!("{}/by/b:v1", s.reg));
    let r = s.agent(&root, &["images", "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = lines(&r.stdout);
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    assert_eq!(rows[0]["reference"], a);
    assert_eq!(
        (
            rows[0]["layers"].as_u64(),
            rows[0]["layers_unpacked"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(rows[0]["bundles"], json!(["app"]));
    assert_eq!(rows[1]["bundles"], json!([]));
    assert!(rows.iter().all(|r| r["complete"] == true));
    let text = s.agent(&root, &["images"]).stdout;
    assert!(
        text.starts_with("REFERENCE") && text.contains(&a) && text.contains("2/2"),
        "{text}"
    );

    let df = |root: &Root| lines(&s.agent(root, &["df", "--output", "json"]).stdout)[0].clone();
    let before = df(&root);
    assert_eq!(
        (
            before["images"].as_u64(),
            before["blobs"].as_u64(),
            before["layers"].as_u64()
        ),
        (Some(2), Some(8), Some(4))
    );
    assert_eq!(
        before["reclaimable"],
        json!({"blobs": 0, "blob_bytes": 0, "layers": 0, "layer_bytes": 0})
    );

    // rmi: a name not in the store changes nothing.
    let r = s.agent(&root, &["rmi", &b, "nowhere.test/x:y"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        lines(&s.agent(&root, &["images", "--output", "json"]).stdout).len(),
        2
    );
    let r = s.agent(&root, &["rmi", &b, &a]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("removed {b}\nremoved {a}\n"));
    let after = df(&root);
    // Every blob goes; of the layers only b's: the bundle still mounts a's.
    assert_eq!(after["reclaimable"]["blobs"], 8);
    assert_eq!(after["reclaimable"]["layers"], 2);
    let r = s.agent(&root, &["prune", "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = lines(&r.stdout)[0].clone();
    assert_eq!(
        (p["blobs"].as_u64(), p["layers"].as_u64()),
        (Some(8), Some(2))
    );
    assert!(p["layer_bytes"].as_u64().unwrap() > 0);
    let now = df(&root);
    assert_eq!(
        (now["blobs"].as_u64(), now["layers"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        run(&mut agent(&["store-check", "--root", root.arg()])).code,
        0
    );
    // The bundle's layers are still there (it is prepared: a runtime may start it).
    let mounts = fs::read_to_string(root.file("run/kci/bundles/app/mounts.json")).unwrap();
    let lower = mounts
        .split("lowerdir=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        lower.split(':').all(|d| std::path::Path::new(d).is_dir()),
        "{lower}"
    );
}

/// A prune killed with SIGKILL at any point leaves stores `store-check` accepts, and a
/// second prune finishes the job.
#[test]
fn a_prune_killed_at_any_point_leaves_consistent_stores() {
    let s = Setup::new();
    let b = format!("{}/by/b:v1", s.reg);
    let mut interrupted = 0;
    for delay_ms in [0u64, 2, 5, 10, 20, 40] {
        let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
        s.fill(&root);
        assert_eq!(s.agent(&root, &["rmi", &b]).code, 0);
        let mut child = agent(&["prune", "--root", root.arg()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            interrupted += 1;
        }
        let left = fs::read_dir(root.file("var/lib/kci/layers/sha256"))
            .unwrap()
            .count();
        let blobs = fs::read_dir(root.file("var/lib/kci/images/blobs/sha256"))
            .unwrap()
            .count();
        eprintln!("kill at {delay_ms} ms: {status:?}, {left} layer(s), {blobs} blob(s) left");
        let check = run(&mut agent(&["store-check", "--root", root.arg()]));
        assert_eq!(
            check.code, 0,
            "after a kill at {delay_ms} ms: {}{}",
            check.stdout, check.stderr
        );
        let r = s.agent(&root, &["prune"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let df: Value =
            serde_json::from_str(s.agent(&root, &["df", "--output", "json"]).stdout.trim())
                .unwrap();
        assert_eq!(df["reclaimable"]["layers"], 0);
        assert_eq!(df["layers"], 2, "a's layers stay: {df}");
    }
    assert!(interrupted > 0, "no kill landed before the prune ended");
}

#[test]
fn completion_scripts_parse() {
    for (shell, check) in [
        ("bash", Some(["bash", "-n"])),
        ("zsh", None),
        ("fish", None),
    ] {
        let r = run(&mut agent(&["completions", shell]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("kci-pull-agent") && r.stdout.contains("prune"),
            "{shell}"
        );
        if let Some([sh, flag]) = check {
            let file = tempfile::NamedTempFile::new().unwrap();
            fs::write(file.path(), &r.stdout).unwrap();
            let ok = Command::new(sh)
                .arg(flag)
                .arg(file.path())
                .status()
                .unwrap();
            assert!(ok.success(), "{shell} -n refused the script");
        }
    }
}
