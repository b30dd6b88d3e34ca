//! The progress bars of `pull`: one per image with bytes, rate and layers unpacked on a terminal (driven here
//! through a pseudo-terminal with util-linux `script`), nothing when stderr is not one.

mod common;

use std::process::Command;

use common::fault::FaultEnv;
use common::images::image;
use common::{bin, pull_report};

#[test]
fn a_pull_on_a_terminal_shows_a_bar_per_image_and_none_otherwise() {
    let e = FaultEnv::start(
        image(81, &[3_000_000, 1_000_000], "amd64", false),
        &["bars/app"],
    );
    let reg = e.registry.addr();
    let image_ref = format!("{reg}/bars/app:v1");
    // `script` runs a pull on a pseudo-terminal (into a fresh store) and copies what it
    // draws to stdout.
    let on_terminal = |no_color: bool| {
        let store = tempfile::tempdir().unwrap();
        let cmd = format!(
            "{} pull --root {} --store {} --http-registry {reg} {image_ref}",
            bin(),
            e.root.arg(),
            store.path().display()
        );
        let mut c = Command::new("script");
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env_remove("KCI_HOST_ALIASES")
            .env_remove("KCI_DNS_CONFIG")
            .env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        c.output()
            .expect("script (util-linux) is missing: run scripts/setup.sh")
    };
    let out = on_terminal(false);
    let screen = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{screen}");
    let bar = screen
        .lines()
        .flat_map(|l| l.split('\r'))
        .find(|l| l.starts_with(&image_ref) && l.contains("MiB") && l.contains("pulled"))
        .unwrap_or_else(|| panic!("no finished bar for {image_ref}: {screen:?}"));
    assert!(bar.contains("[====="), "{bar:?}");
    assert!(bar.contains("/s"), "the rate is shown: {bar:?}");
    assert!(
        bar.contains("unpacked 2/2 layers"),
        "the bar counts the layers unpacked: {bar:?}"
    );
    // The log lines are still there, around the bars.
    assert!(screen.contains("image pulled"), "{screen:?}");
    // In colour on a terminal, unless NO_COLOR is set (https://no-color.org).
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(has_colour(&raw), "{raw:?}");
    let out = on_terminal(true);
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{raw}");
    assert!(raw.contains("image pulled") && !has_colour(&raw), "{raw:?}");

    // Not a terminal: no bar.
    let store = tempfile::tempdir().unwrap();
    let p = pull_report(
        &e.root,
        store.path(),
        &["--http-registry", &reg, &image_ref],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(
        !p.stderr.contains("MiB") && !p.stderr.contains('['),
        "{}",
        p.stderr
    );
}

/// The text of a terminal stream without its escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `s` sets a colour or style (an SGR sequence `ESC [ digits;... m`, not `ESC [ 0 m`).
fn has_colour(s: &str) -> bool {
    s.split('\x1b').skip(1).any(|seq| {
        let Some(rest) = seq.strip_prefix('[') else {
            return false;
        };
        let params: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .collect();
        rest[params.len()..].starts_with('m') && !params.is_empty() && params != "0"
    })
}
