//! Outbound HTTP: which hosts an agent may reach, and the host-side client that reaches them.
//!
//! A request is sent only if the agent's manifest (`allowed-outbound-hosts`) **and** the
//! operator's list (`[outbound] allowed-hosts` in `drover.toml`) allow its target; neither
//! widens the other. Without an operator list the manifest decides, for public addresses only;
//! an empty operator list allows nothing.
//!
//! Loopback, private, link-local, shared, cloud-metadata and other non-public addresses
//! ([`addr`]) are reached only when the manifest's matching pattern **and** the operator's
//! both name the host (or address) outright ([`Allowance::Named`]): a wildcard never covers
//! them, and without an operator list they are never reached. The check is made on the
//! address written in the URL, and again on every address a name resolves to, at connect time,
//! so DNS rebinding cannot get around it. Redirects are never followed by the host: the guest
//! sees the `3xx` answer, and a request to its `location` is checked like any other.

pub mod addr;
mod client;
pub mod pattern;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use addr::{AddressClass, classify};
pub use client::{
    Checked, ErrorKind, Exchange, Outbound, OutboundError, RunOutbound, SendLimits, event_url_of,
    request_too_large,
};
pub use pattern::{AllowList, Allowance, Host, HostPattern, PatternError, Scheme, Target};

/// Default of `max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 16;
/// Default of `max-request-bytes` (10 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 10 << 20;
/// Default of `max-response-bytes` (10 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 << 20;
/// Default of `request-timeout-ms`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default of `connect-timeout-ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// The operator's `[outbound]` section of `drover.toml`.
///
/// ```toml
/// [outbound]
/// allowed-hosts = ["https://*.example.com", "http://127.0.0.1:9000"]
/// max-concurrent-requests = 16
/// max-request-bytes = 10485760
/// max-response-bytes = 10485760
/// request-timeout-ms = 30000
/// connect-timeout-ms = 10000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct OutboundConfig {
    /// Hosts any agent may reach at all (absent: any public host, as manifests allow; empty:
    /// none).
    pub allowed_hosts: Option<Vec<String>>,
    /// Requests one run (or tool call) may have in flight at once; more wait their turn.
    pub max_concurrent_requests: u32,
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_bytes: u64,
    /// Longest one request may take, from connecting to the end of the response body.
    pub request_timeout_ms: u64,
    /// Longest connecting (and the TLS handshake) may take.
    pub connect_timeout_ms: u64,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
        }
    }
}

impl OutboundConfig {
    /// Checks the section: every pattern readable, every limit positive.
    pub fn validate(&self) -> Result<(), String> {
        self.operator_list()?;
        let limits = [
            (
                "max-concurrent-requests",
                u64::from(self.max_concurrent_requests),
            ),
            ("max-request-bytes", self.max_request_bytes),
            ("max-response-bytes", self.max_response_bytes),
            ("request-timeout-ms", self.request_timeout_ms),
            ("connect-timeout-ms", self.connect_timeout_ms),
        ];
        for (key, value) in limits {
            if value == 0 {
                return Err(format!("[outbound] {key} must be positive"));
            }
        }
        Ok(())
    }

    /// The operator's list, parsed (none: no list).
    pub fn operator_list(&self) -> Result<Option<AllowList>, String> {
        self.allowed_hosts
            .as_deref()
            .map(AllowList::parse)
            .transpose()
            .map_err(|e| format!("[outbound] allowed-hosts: {e}"))
    }

    /// The per-request limits.
    pub fn limits(&self) -> SendLimits {
        SendLimits {
            max_concurrent_requests: self.max_concurrent_requests.max(1),
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

/// Lower limits an agent's manifest may set on its runs' requests (`[limits]`); each `None`, or
/// above the host's, leaves the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpLimits {
    /// `max-concurrent-requests`.
    pub max_concurrent_requests: Option<u32>,
    /// `max-request-bytes`.
    pub max_request_bytes: Option<u64>,
    /// `max-response-bytes`.
    pub max_response_bytes: Option<u64>,
    /// `request-timeout-ms`.
    pub request_timeout_ms: Option<u64>,
}

impl SendLimits {
    /// These limits, lowered where `lower` sets a lower one.
    pub fn lowered(self, lower: &HttpLimits) -> Self {
        Self {
            max_concurrent_requests: lower
                .max_concurrent_requests
                .map_or(self.max_concurrent_requests, |n| {
                    n.clamp(1, self.max_concurrent_requests)
                }),
            max_request_bytes: lower
                .max_request_bytes
                .map_or(self.max_request_bytes, |n| n.min(self.max_request_bytes)),
            max_response_bytes: lower
                .max_response_bytes
                .map_or(self.max_response_bytes, |n| n.min(self.max_response_bytes)),
            request_timeout: lower.request_timeout_ms.map_or(self.request_timeout, |ms| {
                Duration::from_millis(ms).min(self.request_timeout)
            }),
        }
    }
}

/// Whether `target` may be reached by an agent whose manifest allows `manifest`, on a host whose
/// operator allows `operator` (none: no operator list); `Ok(true)` when non-public addresses
/// may be reached too (both lists name the host).
pub fn decide(
    operator: Option<&AllowList>,
    manifest: &AllowList,
    target: &Target,
) -> Result<bool, String> {
    let Some(by_manifest) = manifest.allows(target) else {
        return Err(match manifest.is_empty() {
            true => {
                "the agent's manifest allows no outbound hosts (allowed-outbound-hosts)".to_string()
            }
            false => format!("{target} is not in the agent's allowed-outbound-hosts"),
        });
    };
    let by_operator =
        match operator {
            None => None,
            Some(list) => Some(list.allows(target).ok_or_else(|| {
                format!("{target} is not in this host's [outbound] allowed-hosts")
            })?),
        };
    let named = by_manifest == Allowance::Named && by_operator == Some(Allowance::Named);
    if let Host::Ip(ip) = &target.host
        && let Some(class) = classify(*ip)
        && !named
    {
        return Err(non_public(
            &target.host.to_string(),
            class,
            operator.is_some(),
        ));
    }
    Ok(named)
}

/// Why a non-public address was refused.
fn non_public(what: &str, class: AddressClass, operator_list: bool) -> String {
    let how = match operator_list {
        true => {
            "it is reached only if both the agent's allowed-outbound-hosts and this host's \
                 [outbound] allowed-hosts name it"
        }
        false => {
            "it is reached only if this host's [outbound] allowed-hosts and the agent's \
                  allowed-outbound-hosts both name it, and this host has no such list"
        }
    };
    format!("{what} is {}: {how}", class.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> AllowList {
        AllowList::parse(patterns).expect("patterns")
    }

    fn target(url: &str) -> Target {
        Target::from_url(url).expect("url")
    }

    #[test]
    fn both_lists_must_allow() {
        let manifest = list(&["https://api.example.com", "https://*.example.org"]);
        let operator = list(&["https://*.example.org"]);
        assert_eq!(
            decide(None, &manifest, &target("https://api.example.com/x")),
            Ok(false)
        );
        assert!(
            decide(
                Some(&operator),
                &manifest,
                &target("https://api.example.com")
            )
            .is_err()
        );
        assert_eq!(
            decide(Some(&operator), &manifest, &target("https://a.example.org")),
            Ok(false)
        );
        assert!(decide(None, &manifest, &target("http://api.example.com")).is_err());
        assert!(decide(None, &manifest, &target("https://api.example.com:8443")).is_err());
        assert!(
            decide(
                Some(&list(&[])),
                &manifest,
                &target("https://a.example.org")
            )
            .is_err()
        );
        assert!(decide(None, &list(&[]), &target("https://a.example.org")).is_err());
    }

    #[test]
    fn non_public_addresses_need_both_lists_to_name_them() {
        let named = list(&["http://127.0.0.1:9000", "http://localhost:9000"]);
        let wildcard = list(&["http://*:9000"]);
        let url = target("http://127.0.0.1:9000/");
        assert!(decide(None, &named, &url).is_err(), "no operator list");
        assert_eq!(decide(Some(&named), &named, &url), Ok(true));
        assert!(decide(Some(&wildcard), &named, &url).is_err());
        assert!(decide(Some(&named), &wildcard, &url).is_err());
        // A name is allowed by the lists; what it resolves to is checked when connecting.
        let name = target("http://localhost:9000/");
        assert_eq!(decide(Some(&named), &named, &name), Ok(true));
        assert_eq!(decide(Some(&wildcard), &named, &name), Ok(false));
        let metadata = target("http://169.254.169.254/latest");
        let any = list(&["http://*"]);
        let error = decide(Some(&any), &any, &metadata).expect_err("refused");
        assert!(error.contains("cloud metadata"), "{error}");
        let mapped = target("http://[::ffff:127.0.0.1]:9000/");
        assert!(decide(Some(&wildcard), &wildcard, &mapped).is_err());
    }

    #[test]
    fn config_is_checked() {
        assert!(OutboundConfig::default().validate().is_ok());
        let bad = OutboundConfig {
            allowed_hosts: Some(vec!["ftp://x".into()]),
            ..OutboundConfig::default()
        };
        assert!(bad.validate().is_err());
        let zero = OutboundConfig {
            max_response_bytes: 0,
            ..OutboundConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
