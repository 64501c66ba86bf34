//! A BgpPeer's TCP MD5 password: from the Secret `conf.authPasswordSecretRef`
//! names, or from the plain-text `conf.authPassword` that OpenELB objects
//! carry. Pure: the Secrets come from the snapshot. Messages name the Secret
//! and key, never the password.

use std::sync::Arc;

use crate::annotations::PORTER_NAMESPACE;
use crate::crd::{PeerConf, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;

/// Linux refuses longer TCP MD5 keys (`TCP_MD5SIG_MAXKEYLEN`).
const MAX_PASSWORD_LEN: usize = 80;

/// The namespaces a binary reads Secrets from, and where a reference
/// without a namespace points (the first of them, or the binary's own
/// namespace when it reads none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretScope {
    namespaces: Vec<String>,
    default_namespace: String,
}

impl Default for SecretScope {
    fn default() -> Self {
        Self {
            namespaces: vec![PORTER_NAMESPACE.to_string()],
            default_namespace: PORTER_NAMESPACE.to_string(),
        }
    }
}

impl SecretScope {
    /// `None` when `namespaces` is empty: a reference needs a default.
    pub fn new(namespaces: Vec<String>) -> Option<Self> {
        let default_namespace = namespaces.first()?.clone();
        Some(Self {
            namespaces,
            default_namespace,
        })
    }

    /// Reads no Secrets (the agent unless told otherwise): a reference
    /// resolves to [`AuthError::NoSecretsRead`], naming the flag to set.
    pub fn unread(default_namespace: String) -> Self {
        Self {
            namespaces: Vec::new(),
            default_namespace,
        }
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn default_namespace(&self) -> &str {
        &self.default_namespace
    }
}

/// A password the controller can use, and what to tell the operator about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub password: Option<String>,
    /// Set when the configuration works but should change.
    pub warning: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authPasswordSecretRef points to namespace {namespace}, but Porter reads Secrets only in {watched}; move the Secret there, or add the namespace to --secret-namespaces and give Porter a Role to read Secrets in it"
    )]
    NamespaceNotRead { namespace: String, watched: String },
    #[error(
        "authPasswordSecretRef points to namespace {namespace}, but this process reads no Secrets; start it with --secret-namespaces={namespace} and let it list and watch Secrets there (docs/install.md, node mode)"
    )]
    NoSecretsRead { namespace: String },
    #[error("Secret {namespace}/{name} (authPasswordSecretRef) does not exist; create it")]
    SecretMissing { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} has no key `{key}` (authPasswordSecretRef.key); it has: {present}"
    )]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
        present: String,
    },
    #[error(
        "Secret {namespace}/{name} key `{key}` is {problem}; a TCP MD5 password is 1 to 80 bytes of text"
    )]
    BadValue {
        namespace: String,
        name: String,
        key: String,
        problem: &'static str,
    },
}

/// The password for `conf`. A Secret reference wins over `authPassword`;
/// when it cannot be read the result is an error, never an empty password,
/// so the session is not (re)started without its key.
pub fn resolve(
    conf: &PeerConf,
    secrets: &[Arc<Secret>],
    scope: &SecretScope,
) -> Result<Auth, AuthError> {
    let literal = conf.auth_password.as_deref().filter(|p| !p.is_empty());
    let Some(reference) = &conf.auth_password_secret_ref else {
        return Ok(Auth {
            password: literal.map(str::to_string),
            warning: literal.map(|_| {
                "authPassword is plain text that anyone who can read BgpPeers can see; \
                 move it to a Secret and set authPasswordSecretRef instead"
                    .to_string()
            }),
        });
    };
    let password = from_secret(reference, secrets, scope)?;
    Ok(Auth {
        password: Some(password),
        warning: literal.map(|_| {
            "both authPassword and authPasswordSecretRef are set; the Secret is used \
             (remove authPassword)"
                .to_string()
        }),
    })
}

fn from_secret(
    reference: &SecretKeyRef,
    secrets: &[Arc<Secret>],
    scope: &SecretScope,
) -> Result<String, AuthError> {
    let namespace = reference
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(scope.default_namespace());
    if scope.namespaces().is_empty() {
        return Err(AuthError::NoSecretsRead {
            namespace: namespace.to_string(),
        });
    }
    if !scope.namespaces().iter().any(|n| n == namespace) {
        return Err(AuthError::NamespaceNotRead {
            namespace: namespace.to_string(),
            watched: scope.namespaces().join(", "),
        });
    }
    let secret = secrets
        .iter()
        .find(|s| {
            s.metadata.name.as_deref() == Some(reference.name.as_str())
                && s.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })
        .ok_or_else(|| AuthError::SecretMissing {
            namespace: namespace.to_string(),
            name: reference.name.clone(),
        })?;
    let data = secret.data.as_ref();
    let bytes = data.and_then(|d| d.get(&reference.key)).ok_or_else(|| {
        let keys: Vec<&str> = data
            .into_iter()
            .flat_map(|d| d.keys())
            .map(String::as_str)
            .collect();
        AuthError::KeyMissing {
            namespace: namespace.to_string(),
            name: reference.name.clone(),
            key: reference.key.clone(),
            present: if keys.is_empty() {
                "no keys".to_string()
            } else {
                keys.join(", ")
            },
        }
    })?;
    let bad = |problem| AuthError::BadValue {
        namespace: namespace.to_string(),
        name: reference.name.clone(),
        key: reference.key.clone(),
        problem,
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|_| bad("not UTF-8 text"))?;
    // `echo pw | base64` adds a newline nobody means as part of the password.
    let text = text.strip_suffix('\n').unwrap_or(text);
    match text.len() {
        0 => Err(bad("empty")),
        n if n > MAX_PASSWORD_LEN => Err(bad("longer than 80 bytes")),
        _ => Ok(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> Arc<Secret> {
        Arc::new(Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        })
    }

    fn conf(literal: Option<&str>, reference: Option<(&str, &str, Option<&str>)>) -> PeerConf {
        PeerConf {
            auth_password: literal.map(str::to_string),
            auth_password_secret_ref: reference.map(|(name, key, namespace)| SecretKeyRef {
                name: name.into(),
                key: key.into(),
                namespace: namespace.map(str::to_string),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn resolution_table() {
        let secrets = [
            secret("porter-system", "bgp-auth", &[("password", b"s3cret")]),
            secret("porter-system", "newline", &[("password", b"s3cret\n")]),
            secret("porter-system", "empty", &[("password", b"")]),
            secret("porter-system", "binary", &[("password", &[0xff, 0xfe])]),
            secret("porter-system", "long", &[("password", &[b'x'; 81])]),
            secret("other", "bgp-auth", &[("password", b"elsewhere")]),
        ];
        let scope = SecretScope::default();
        let ok = |pw: &str| Ok(Some(pw.to_string()));
        // (case, configuration, the password or a part of the error)
        type Case = (&'static str, PeerConf, Result<Option<String>, &'static str>);
        let cases: Vec<Case> = vec![
            ("nothing set", conf(None, None), Ok(None)),
            ("empty literal means none", conf(Some(""), None), Ok(None)),
            ("literal", conf(Some("hunter2"), None), ok("hunter2")),
            (
                "secret in the controller's namespace",
                conf(None, Some(("bgp-auth", "password", None))),
                ok("s3cret"),
            ),
            (
                "explicit namespace",
                conf(None, Some(("bgp-auth", "password", Some("porter-system")))),
                ok("s3cret"),
            ),
            (
                "the Secret wins over the literal",
                conf(Some("hunter2"), Some(("bgp-auth", "password", None))),
                ok("s3cret"),
            ),
            (
                "a trailing newline is not part of it",
                conf(None, Some(("newline", "password", None))),
                ok("s3cret"),
            ),
            (
                "missing Secret",
                conf(Some("hunter2"), Some(("nope", "password", None))),
                Err("Secret porter-system/nope (authPasswordSecretRef) does not exist"),
            ),
            (
                "missing key",
                conf(None, Some(("bgp-auth", "pass", None))),
                Err("has no key `pass` (authPasswordSecretRef.key); it has: password"),
            ),
            (
                "empty value",
                conf(None, Some(("empty", "password", None))),
                Err("key `password` is empty"),
            ),
            (
                "not text",
                conf(None, Some(("binary", "password", None))),
                Err("is not UTF-8 text"),
            ),
            (
                "too long for TCP MD5",
                conf(None, Some(("long", "password", None))),
                Err("longer than 80 bytes"),
            ),
            (
                "a namespace the controller does not read",
                conf(None, Some(("bgp-auth", "password", Some("other")))),
                Err("reads Secrets only in porter-system"),
            ),
        ];
        for (name, conf, want) in cases {
            let got = resolve(&conf, &secrets, &scope);
            match (&got, want) {
                (Ok(auth), Ok(pw)) => assert_eq!(auth.password, pw, "{name}"),
                (Err(e), Err(text)) => {
                    let message = e.to_string();
                    assert!(message.contains(text), "{name}: {message}");
                    for pw in ["s3cret", "hunter2", "elsewhere"] {
                        assert!(!message.contains(pw), "{name} shows a password: {message}");
                    }
                }
                _ => panic!("{name}: got {got:?}"),
            }
        }
    }

    /// An agent started without --secret-namespaces watches no Secret (and
    /// needs no RBAC for them); a reference says which flag to set rather
    /// than that the Secret does not exist.
    #[test]
    fn a_scope_reading_no_secrets_names_the_flag() {
        let secrets = [secret(
            "porter-system",
            "bgp-auth",
            &[("password", b"s3cret")],
        )];
        let scope = SecretScope::unread("porter-system".into());
        assert!(scope.namespaces().is_empty());
        let err = resolve(
            &conf(None, Some(("bgp-auth", "password", None))),
            &secrets,
            &scope,
        )
        .expect_err("no Secret is read");
        assert_eq!(
            err,
            AuthError::NoSecretsRead {
                namespace: "porter-system".into()
            }
        );
        assert!(
            err.to_string()
                .contains("--secret-namespaces=porter-system"),
            "{err}"
        );
        let literal = resolve(&conf(Some("hunter2"), None), &secrets, &scope);
        assert_eq!(literal.map(|a| a.password), Ok(Some("hunter2".into())));
    }

    #[test]
    fn warnings_recommend_the_secret_and_say_which_wins() {
        let secrets = [secret(
            "porter-system",
            "bgp-auth",
            &[("password", b"s3cret")],
        )];
        let scope = SecretScope::default();
        let literal = resolve(&conf(Some("hunter2"), None), &secrets, &scope).expect("literal");
        let warning = literal
            .warning
            .expect("a warning for a plain-text password");
        assert!(warning.contains("authPasswordSecretRef"), "{warning}");
        assert!(!warning.contains("hunter2"), "{warning}");
        let both = resolve(
            &conf(Some("hunter2"), Some(("bgp-auth", "password", None))),
            &secrets,
            &scope,
        )
        .expect("both");
        assert!(
            both.warning
                .as_deref()
                .is_some_and(|w| w.contains("the Secret is used")),
            "{both:?}"
        );
        let clean = resolve(
            &conf(None, Some(("bgp-auth", "password", None))),
            &secrets,
            &scope,
        )
        .expect("ref");
        assert_eq!(clean.warning, None);
    }

    #[test]
    fn the_scope_sets_the_default_namespace() {
        let secrets = [secret("net", "bgp-auth", &[("password", b"in-net")])];
        let scope = SecretScope::new(vec!["net".into(), "porter-system".into()]).expect("scope");
        let auth = resolve(
            &conf(None, Some(("bgp-auth", "password", None))),
            &secrets,
            &scope,
        )
        .expect("found in the first namespace");
        assert_eq!(auth.password.as_deref(), Some("in-net"));
        assert_eq!(SecretScope::new(vec![]), None);
    }
}
