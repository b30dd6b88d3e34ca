//! Name validation with the Kubernetes API rules, phrased for the person who typed the name.

/// Maximum length of a DNS-1123 subdomain (Kubernetes `DNS1123SubdomainMaxLength`).
pub const SUBDOMAIN_MAX: usize = 253;
/// Maximum length of one DNS label.
pub const LABEL_MAX: usize = 63;

/// Describes the first character of `s` that can never appear in a name written to a file:
/// control characters (newlines included), whitespace and `#` would let a value inject a line,
/// a comment or another field.
pub fn smuggled_char(s: &str) -> Option<String> {
    s.chars().find_map(|c| match c {
        '\n' => Some("a newline".to_string()),
        '\r' => Some("a carriage return".to_string()),
        '#' => Some("'#' (which starts a comment in hosts and resolv.conf)".to_string()),
        c if c.is_control() => Some(format!("the control character {c:?}")),
        c if c.is_whitespace() => Some(format!("whitespace ({c:?})")),
        _ => None,
    })
}

/// Checks a DNS-1123 subdomain as Kubernetes does (`IsDNS1123Subdomain`): lower-case
/// alphanumerics, `-` and `.`, each label starting and ending alphanumeric, at most 253
/// characters. Labels are also held to 63 characters, which DNS itself requires.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if let Some(what) = smuggled_char(name) {
        return Err(format!("contains {what}"));
    }
    if name.len() > SUBDOMAIN_MAX {
        return Err(format!(
            "is {} characters long; a DNS name has at most {SUBDOMAIN_MAX}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "contains upper-case letters; Kubernetes requires lower case (use {:?})",
            name.to_ascii_lowercase()
        ));
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(())
}

pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(
            "has an empty label (a leading, trailing or doubled '.'); a DNS-1123 subdomain \
             is labels of [a-z0-9-] separated by single dots"
                .into(),
        );
    }
    if label.len() > LABEL_MAX {
        return Err(format!(
            "has a label of {} characters; a DNS label has at most {LABEL_MAX}",
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "contains {c:?}; only lower-case letters, digits, '-' and '.' are allowed"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "has the label {label:?}, which starts or ends with '-'"
        ));
    }
    Ok(())
}

/// A DNS search domain: a DNS-1123 subdomain that may end with one `.` (Kubernetes
/// `validateDNSSearches`).
pub fn check_search_domain(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    check_dns1123_subdomain(trimmed)
}

/// The form used to compare search domains: lower case, without the trailing dot.
pub fn search_key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        let ok = [
            "a",
            "reg.example.com",
            "harbor-1.corp.internal",
            "1.2.3.4",
            "0a",
            &"a".repeat(63),
        ];
        for name in ok {
            assert_eq!(check_dns1123_subdomain(name), Ok(()), "{name}");
        }
        let bad = [
            ("", "empty"),
            ("Reg.example.com", "upper-case"),
            ("reg.example.com.", "empty label"),
            (".reg", "empty label"),
            ("a..b", "empty label"),
            ("-a.b", "'-'"),
            ("a-.b", "'-'"),
            ("reg_1.example", "'_'"),
            ("reg.example.com\n10.0.0.1 evil", "newline"),
            ("reg.example.com#x", "'#'"),
            ("reg example", "whitespace"),
            ("reg\texample", "control"),
            ("reg\u{0}x", "control"),
            ("rég.example", "'é'"),
            ("a:b", "':'"),
        ];
        for (name, why) in bad {
            let err = check_dns1123_subdomain(name).expect_err(name);
            assert!(err.contains(why), "{name:?}: {err}");
        }
        let long = format!("{}.b", "a".repeat(64));
        assert!(check_dns1123_subdomain(&long).unwrap_err().contains("63"));
        let too_long = ["abcdefghi"; 26].join(".");
        assert!(too_long.len() > 253);
        assert!(
            check_dns1123_subdomain(&too_long)
                .unwrap_err()
                .contains("253")
        );
    }

    #[test]
    fn search_domains() {
        assert_eq!(check_search_domain("corp.example."), Ok(()));
        assert_eq!(check_search_domain("corp.example"), Ok(()));
        assert!(check_search_domain(".").is_err());
        assert!(check_search_domain("corp..example").is_err());
        assert!(check_search_domain("corp.example..").is_err());
        assert_eq!(search_key("Corp.Example."), "corp.example");
    }
}
