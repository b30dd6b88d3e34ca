//! Runs every case under `testdata/cases/` with the built binary and compares the files it
//! writes (and `explain --output json`) with the expected outputs kept next to the inputs.
//! `KCI_BLESS=1 cargo test --test testdata` rewrites the expected outputs; review the diff.

mod common;

use std::fs;
use std::path::Path;

use common::{Root, agent, parse_env_file, run};

fn check(expected_path: &Path, got: &str, failures: &mut Vec<String>) {
    if std::env::var_os("KCI_BLESS").is_some() {
        fs::write(expected_path, got).unwrap();
        return;
    }
    let want = fs::read_to_string(expected_path).unwrap_or_default();
    if want != got {
        failures.push(format!(
            "{}:\n--- expected\n{want}--- got\n{got}",
            expected_path.display()
        ));
    }
}

#[test]
fn network_and_explain_cases() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cases");
    let mut names: Vec<_> = fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    assert!(
        names.len() >= 5,
        "test cases missing from {}",
        cases.display()
    );
    let mut failures = Vec::new();
    for case in &names {
        let root = Root::new(
            &fs::read_to_string(case.join("hosts.in")).unwrap(),
            &fs::read_to_string(case.join("resolv.conf.in")).unwrap(),
        );
        let env = parse_env_file(&fs::read_to_string(case.join("env")).unwrap_or_default());
        let spec = case.join("pod.json");
        let spec = spec.to_str().unwrap();

        let mut cmd = agent(&["network", "--root", root.arg(), "--spec", spec]);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{}: {}", case.display(), r.stderr);
        check(
            &case.join("hosts.out"),
            &root.read("etc/hosts"),
            &mut failures,
        );
        check(
            &case.join("resolv.conf.out"),
            &root.read("etc/resolv.conf"),
            &mut failures,
        );

        // A second run with the same input changes no byte of any file.
        let before = root.snapshot();
        let mut cmd = agent(&["network", "--root", root.arg(), "--spec", spec]);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{}: {}", case.display(), r.stderr);
        assert_eq!(
            before,
            root.snapshot(),
            "{}: second run changed files",
            case.display()
        );

        let mut cmd = agent(&["explain", "--output", "json", "--spec", spec]);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{}: {}", case.display(), r.stderr);
        check(&case.join("explain.jsonl"), &r.stdout, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
