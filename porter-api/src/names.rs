//! Object names as the API server validates them (apimachinery's
//! `IsDNS1123Label`, `IsDNS1123Subdomain`, `IsDNS1035Label`). The `dir:`
//! source puts names into file paths, so it must refuse what the API server
//! would: none of these can hold a `/`, a `..` or start with a `.`.

/// The rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// At most 63 of `a-z`, `0-9`, `-`; starts and ends alphanumeric
    /// (Namespaces, and every `metadata.namespace`).
    Dns1123Label,
    /// Dot-separated labels, at most 253 characters (most kinds).
    Dns1123Subdomain,
    /// A DNS-1123 label that starts with a letter (Services).
    Dns1035Label,
}

impl NameRule {
    /// The rule of `kind`'s names.
    pub fn of_kind(kind: &str) -> Self {
        match kind {
            "Namespace" => Self::Dns1123Label,
            "Service" => Self::Dns1035Label,
            _ => Self::Dns1123Subdomain,
        }
    }

    /// `Err` says what is wrong, in the API server's terms.
    pub fn check(self, name: &str) -> Result<(), String> {
        let ok = match self {
            Self::Dns1123Label => is_label(name),
            Self::Dns1035Label => {
                is_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
            }
            Self::Dns1123Subdomain => name.len() <= 253 && name.split('.').all(is_label),
        };
        if ok {
            return Ok(());
        }
        let rule = match self {
            Self::Dns1123Label => {
                "a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
            }
            Self::Dns1035Label => {
                "a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
            }
            Self::Dns1123Subdomain => {
                "a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"
            }
        };
        Err(format!("{name:?} is not {rule}"))
    }
}

fn is_label(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 63
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&c| alnum(c) || c == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::NameRule::{self, *};

    #[test]
    fn names_the_api_server_accepts_and_refuses() {
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_subdomain = [long_label.as_str(); 4].join(".");
        let cases: &[(NameRule, &str, bool)] = &[
            (Dns1123Label, "porter-system", true),
            (Dns1123Label, "0abc", true),
            (Dns1123Label, &long_label, true),
            (Dns1123Label, &too_long_label, false),
            (Dns1123Label, "", false),
            (Dns1123Label, "-a", false),
            (Dns1123Label, "a-", false),
            (Dns1123Label, "Shop", false),
            (Dns1123Label, "a.b", false),
            (Dns1035Label, "web", true),
            (Dns1035Label, "0web", false),
            (Dns1123Subdomain, "eip-sample-pool", true),
            (Dns1123Subdomain, "node-1.rack-2.example", true),
            (Dns1123Subdomain, &long_subdomain, false),
            (Dns1123Subdomain, "..", false),
            (Dns1123Subdomain, "../../etc/passwd", false),
            (Dns1123Subdomain, "a/b", false),
            (Dns1123Subdomain, ".hidden", false),
            (Dns1123Subdomain, "a..b", false),
            (Dns1123Subdomain, "a_b", false),
            (Dns1123Subdomain, "tab\there", false),
        ];
        for &(rule, name, valid) in cases {
            assert_eq!(rule.check(name).is_ok(), valid, "{rule:?} {name:?}");
        }
        assert_eq!(NameRule::of_kind("Service"), Dns1035Label);
        assert_eq!(NameRule::of_kind("Eip"), Dns1123Subdomain);
    }
}
