//! `/etc/hosts`: one managed block owned by the agent, every other line kept byte for byte.

use crate::config::hostalias::HostsEntry;
use crate::diag::Notes;

pub const BEGIN: &str = "# BEGIN kci-pull-agent host aliases (managed; edits inside are lost)";
pub const END: &str = "# END kci-pull-agent host aliases";
const BEGIN_PREFIX: &str = "# BEGIN kci-pull-agent";
const END_PREFIX: &str = "# END kci-pull-agent";

/// The block for `entries`, or an empty string when there are none.
pub fn block(entries: &[HostsEntry]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut out = format!("{BEGIN}\n");
    for e in entries {
        out.push_str(&e.ip.to_string());
        for h in &e.hostnames {
            out.push('\t');
            out.push_str(h);
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Returns the new content of the hosts file: `existing` with its managed block replaced (or
/// removed when there are no entries, or inserted when there was none). A new block goes
/// after the file's leading comment lines, before any entry, so that the pod's aliases win
/// over a conflicting line elsewhere in the file (resolvers use the first match).
///
/// Fails when `existing` has an unterminated or stray marker: a hand-edited block whose
/// extent is unknown, which the agent refuses to guess at.
pub fn render(existing: &str, entries: &[HostsEntry], notes: &mut Notes) -> Result<String, String> {
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let is_begin = |l: &str| l.trim_end().starts_with(BEGIN_PREFIX);
    let is_end = |l: &str| l.trim_end().starts_with(END_PREFIX);

    // Locate every managed block; keep everything else.
    let mut kept: Vec<&str> = Vec::new();
    let mut first_block_at: Option<usize> = None;
    let mut open: Option<usize> = None;
    for (n, line) in lines.iter().enumerate() {
        match open {
            Some(_) if is_end(line) => open = None,
            Some(_) if is_begin(line) => {
                return Err(format!(
                    "line {}: a second begin marker inside the kci-pull-agent block opened at \
                     line {}",
                    n + 1,
                    open.unwrap_or(0) + 1
                ));
            }
            Some(_) => {}
            None if is_begin(line) => {
                open = Some(n);
                first_block_at.get_or_insert(kept.len());
            }
            None if is_end(line) => {
                return Err(format!(
                    "line {}: an end marker without a begin marker",
                    n + 1
                ));
            }
            None => kept.push(line),
        }
    }
    if let Some(n) = open {
        return Err(format!(
            "line {}: the kci-pull-agent block is not terminated by {END:?}",
            n + 1
        ));
    }

    warn_conflicts(&kept, entries, notes);

    let new_block = block(entries);
    let at = first_block_at.unwrap_or_else(|| {
        let comments = kept
            .iter()
            .take_while(|l| l.trim_start().starts_with('#'))
            .count();
        // Never after a last line that has no newline: removing the block later must give
        // back the file byte for byte.
        match kept.last() {
            Some(last) if comments == kept.len() && !last.ends_with('\n') => comments - 1,
            _ => comments,
        }
    });
    let mut out = String::with_capacity(existing.len() + new_block.len());
    for (i, line) in kept.iter().enumerate() {
        if i == at {
            out.push_str(&new_block);
        }
        out.push_str(line);
        if i + 1 == kept.len() && !line.ends_with('\n') && at > i && !new_block.is_empty() {
            out.push('\n');
        }
    }
    if at >= kept.len() {
        out.push_str(&new_block);
    }
    Ok(out)
}

/// Warns about lines outside the block that map one of our names to another address.
fn warn_conflicts(kept: &[&str], entries: &[HostsEntry], notes: &mut Notes) {
    for (n, line) in kept.iter().enumerate() {
        let content = line.split('#').next().unwrap_or("");
        let mut fields = content.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        for name in fields {
            for e in entries {
                if e.ip.to_string() != addr
                    && addr.parse::<std::net::IpAddr>().ok() != Some(e.ip)
                    && e.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name))
                {
                    notes.warn(format!(
                        "an existing line of the hosts file maps {name} to {addr}; the managed \
                         entry {} {name} comes first and takes precedence (line {} of the file \
                         without the managed block)",
                        e.ip,
                        n + 1
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, names: &[&str]) -> HostsEntry {
        HostsEntry {
            ip: ip.parse().unwrap(),
            hostnames: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn render_ok(existing: &str, entries: &[HostsEntry]) -> String {
        render(existing, entries, &mut Notes::default()).unwrap()
    }

    const BASE: &str = "# /etc/hosts\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";

    #[test]
    fn inserts_after_leading_comments_and_is_idempotent() {
        let e = [
            entry("10.0.0.1", &["reg.example.com", "reg"]),
            entry("fd00::1", &["v6.example"]),
        ];
        let once = render_ok(BASE, &e);
        assert_eq!(
            once,
            format!(
                "# /etc/hosts\n{BEGIN}\n10.0.0.1\treg.example.com\treg\nfd00::1\tv6.example\n{END}\n\
                 127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
            )
        );
        assert_eq!(render_ok(&once, &e), once);
    }

    #[test]
    fn replaces_in_place_and_removes_without_leaving_stale_lines() {
        let first = render_ok(BASE, &[entry("10.0.0.1", &["old.example"])]);
        let second = render_ok(&first, &[entry("10.0.0.2", &["new.example"])]);
        assert!(!second.contains("old.example"));
        assert!(second.contains("10.0.0.2\tnew.example\n"));
        assert_eq!(render_ok(&second, &[]), BASE);
    }

    #[test]
    fn keeps_every_other_line_and_odd_endings() {
        let odd = "# c\n\n10.1.1.1 a # comment\n  \t\nlast-without-newline";
        let with = render_ok(odd, &[entry("10.0.0.1", &["x"])]);
        assert!(with.starts_with(&format!("# c\n{BEGIN}\n")));
        assert!(with.ends_with("\nlast-without-newline"));
        assert_eq!(render_ok(&with, &[]), odd);
        // A file of comments only, without a final newline, gets the block before its last
        // line, so that removing the block restores it exactly.
        let comments = render_ok("# a\n# only", &[entry("10.0.0.1", &["x"])]);
        assert_eq!(
            comments,
            format!("# a\n{BEGIN}\n10.0.0.1\tx\n{END}\n# only")
        );
        assert_eq!(render_ok(&comments, &[]), "# a\n# only");
        let comments = render_ok("# a\n", &[entry("10.0.0.1", &["x"])]);
        assert_eq!(comments, format!("# a\n{BEGIN}\n10.0.0.1\tx\n{END}\n"));
        assert_eq!(
            render_ok("", &[entry("10.0.0.1", &["x"])]),
            block(&[entry("10.0.0.1", &["x"])])
        );
        assert_eq!(render_ok("", &[]), "");
    }

    #[test]
    fn merges_duplicate_blocks_into_one() {
        let b = block(&[entry("10.0.0.1", &["x"])]);
        let two = format!("127.0.0.1 localhost\n{b}1.1.1.1 a\n{b}");
        let out = render_ok(&two, &[entry("10.0.0.9", &["y"])]);
        assert_eq!(out.matches(BEGIN).count(), 1);
        assert_eq!(
            out,
            format!(
                "127.0.0.1 localhost\n{}1.1.1.1 a\n",
                block(&[entry("10.0.0.9", &["y"])])
            )
        );
    }

    #[test]
    fn refuses_malformed_blocks() {
        let e = [entry("10.0.0.1", &["x"])];
        for bad in [
            format!("{BEGIN}\n10.0.0.1 x\n"),
            format!("1.1.1.1 a\n{END}\n"),
            format!("{BEGIN}\n{BEGIN}\n{END}\n"),
        ] {
            assert!(render(&bad, &e, &mut Notes::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn warns_about_conflicting_lines() {
        let mut notes = Notes::default();
        render(
            "10.9.9.9 reg.example.com\n10.0.0.1 reg.example.com\n",
            &[entry("10.0.0.1", &["reg.example.com"])],
            &mut notes,
        )
        .unwrap();
        assert_eq!(notes.warnings.len(), 1, "{notes:?}");
        assert!(notes.warnings[0].contains("10.9.9.9"));
    }
}
