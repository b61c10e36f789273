//! Allowed-host patterns: `scheme://host:port`, the grammar of a manifest's
//! `allowed-outbound-hosts`, of the operator's list and of the hosts a secret may be sent to.
//!
//! | part | written as | matches |
//! |---|---|---|
//! | scheme | `http`, `https` or `*` | that scheme, or either |
//! | host | `api.example.com` | that name (case-insensitive, a trailing dot ignored) |
//! | | `*.example.org` | every name under `example.org` (not `example.org` itself) |
//! | | `127.0.0.1`, `[::1]` | that address, written as an address |
//! | | `*` | every host |
//! | port | `:9000`, `:*`, or nothing | that port, any port, or the scheme's own (80, 443) |
//!
//! A pattern has no path, query, user or fragment. `*` with no port means any host on the
//! scheme's own port; `*://example.com` means `http://example.com:80` and
//! `https://example.com:443`.
//!
//! A match says whether the pattern *named* the host ([`Allowance::Named`]: a name or an
//! address written out) or only covered it with a wildcard ([`Allowance::Wildcard`]). Loopback,
//! private, link-local and cloud-metadata addresses are reached only through named patterns, so
//! a wildcard can never be widened to them by DNS.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A URL scheme an outbound request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// The scheme's own port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host of a request: a DNS name (lower case, no trailing dot) or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name.
    Name(String),
    /// An IP address written in the URL.
    Ip(IpAddr),
}

impl Host {
    /// Reads a URL's host: an address (IPv6 in brackets), or a name, which is lower-cased and
    /// loses a trailing dot. Refuses what no URL host may be (empty, spaces, `@`, `/`, …).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| PatternError::new(text, "an IPv6 address needs its closing `]`"))?;
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| PatternError::new(text, "not an IPv6 address"));
        }
        if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(PatternError::new(text, "not a host name or an IP address"));
        }
        // A name of digits and dots only is an address some resolvers read in other forms
        // (`127.1`, `0x7f.1`): refuse it rather than guess.
        if name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(PatternError::new(text, "not a valid IPv4 address"));
        }
        Ok(Host::Name(name))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where an outbound request goes: scheme, host and port (the URL's, or the scheme's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The scheme.
    pub scheme: Scheme,
    /// The host.
    pub host: Host,
    /// The port.
    pub port: u16,
}

impl Target {
    /// A target from a scheme and an authority (`host`, `host:port`, `[v6]:port`); an
    /// authority with user information (`user@host`) is refused.
    pub fn new(scheme: Scheme, authority: &str) -> Result<Self, PatternError> {
        if authority.contains('@') {
            return Err(PatternError::new(
                authority,
                "user information is not allowed in an authority",
            ));
        }
        let (host, port) = split_port(authority)?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| PatternError::new(authority, "not a port number"))?,
        };
        Ok(Self {
            scheme,
            host: Host::parse(host)?,
            port,
        })
    }

    /// A target from an absolute URL (`https://api.example.com/path?q`); only the scheme and
    /// authority are read.
    pub fn from_url(url: &str) -> Result<Self, PatternError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| PatternError::new(url, "not an absolute URL"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| PatternError::new(url, "only http and https URLs are allowed"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        Self::new(scheme, &rest[..end])
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Splits `host:port` (`[v6]:port`), leaving the port out if none is written.
fn split_port(authority: &str) -> Result<(&str, Option<&str>), PatternError> {
    if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or_else(|| PatternError::new(authority, "an IPv6 address needs its closing `]`"))?;
        let (host, rest) = authority.split_at(close + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err(PatternError::new(authority, "unexpected text after `]`")),
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// How a pattern covers a host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `*`.
    Any,
    /// `*.suffix`: names ending in `.suffix`.
    Under(String),
    /// A name or an address, written out.
    Exactly(Host),
}

/// How a pattern covers a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    /// `:*`.
    Any,
    /// No port written: the scheme's own.
    SchemeDefault,
    /// `:n`.
    Exactly(u16),
}

/// One allowed-host pattern (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    /// `None` for `*`.
    scheme: Option<Scheme>,
    host: HostMatch,
    port: PortMatch,
}

/// How a pattern let a target through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allowance {
    /// A wildcard covered the host.
    Wildcard,
    /// The pattern wrote the host (or address) out.
    Named,
}

impl HostPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern covers `target`, and how.
    pub fn allows(&self, target: &Target) -> Option<Allowance> {
        if self.scheme.is_some_and(|s| s != target.scheme) {
            return None;
        }
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::SchemeDefault => target.port == target.scheme.default_port(),
            PortMatch::Exactly(p) => target.port == p,
        };
        if !port_ok {
            return None;
        }
        match (&self.host, &target.host) {
            (HostMatch::Any, _) => Some(Allowance::Wildcard),
            (HostMatch::Under(suffix), Host::Name(name)) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
                .then_some(Allowance::Wildcard),
            (HostMatch::Under(_), Host::Ip(_)) => None,
            (HostMatch::Exactly(host), target) => (host == target).then_some(Allowance::Named),
        }
    }
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::read(text).map_err(|e| PatternError::new(text, &e.why))
    }
}

impl HostPattern {
    fn read(text: &str) -> Result<Self, PatternError> {
        let err = |why: &str| PatternError::new(text, why);
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| err("expected scheme://host[:port], as in https://api.example.com"))?;
        let scheme = match scheme {
            "*" => None,
            other => Some(
                Scheme::parse(other).ok_or_else(|| err("the scheme must be http, https or *"))?,
            ),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("a pattern has no path, query, fragment or user"));
        }
        let (host, port) = split_port(rest)?;
        let port = match port {
            None => PortMatch::SchemeDefault,
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exactly(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port must be a number from 1 to 65535, or *"))?,
            ),
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            match Host::parse(suffix)? {
                Host::Name(name) => HostMatch::Under(name),
                Host::Ip(_) => return Err(err("`*.` goes before a name, not an address")),
            }
        } else if host.contains('*') {
            return Err(err("`*` may stand for the whole host, or open it as `*.`"));
        } else {
            HostMatch::Exactly(Host::parse(host)?)
        };
        Ok(Self {
            text: text.to_string(),
            scheme,
            host,
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A list of patterns; a target is allowed if any covers it (with the strongest allowance of
/// those that do). An empty list allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<HostPattern>,
}

impl AllowList {
    /// Parses every pattern; the first that cannot be read is the error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| p.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// The patterns.
    pub fn patterns(&self) -> &[HostPattern] {
        &self.patterns
    }

    /// Whether the list is empty (allows nothing).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern covers `target`: `Named` if one of them names it.
    pub fn allows(&self, target: &Target) -> Option<Allowance> {
        self.patterns.iter().filter_map(|p| p.allows(target)).max()
    }
}

/// A pattern, URL or authority that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {why}")]
pub struct PatternError {
    /// What was read.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl PatternError {
    fn new(text: &str, why: &str) -> Self {
        Self {
            text: text.to_string(),
            why: why.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::from_url(url).expect("a URL")
    }

    fn allows(pattern: &str, url: &str) -> Option<Allowance> {
        pattern
            .parse::<HostPattern>()
            .expect("a pattern")
            .allows(&target(url))
    }

    #[test]
    fn schemes_and_default_ports() {
        assert_eq!(
            allows("https://api.example.com", "https://api.example.com/v1"),
            Some(Allowance::Named)
        );
        assert_eq!(
            allows("https://api.example.com", "http://api.example.com"),
            None
        );
        assert_eq!(
            allows("https://api.example.com", "https://api.example.com:8443"),
            None
        );
        assert_eq!(
            allows("https://api.example.com", "https://api.example.com:443/"),
            Some(Allowance::Named)
        );
        assert_eq!(
            allows("*://api.example.com", "http://api.example.com"),
            Some(Allowance::Named)
        );
        assert_eq!(
            allows("*://api.example.com", "http://api.example.com:443"),
            None
        );
        assert_eq!(
            allows("http://127.0.0.1:9000", "http://127.0.0.1:9000/work"),
            Some(Allowance::Named)
        );
        assert_eq!(
            allows("http://127.0.0.1:9000", "http://127.0.0.1:9001"),
            None
        );
        assert_eq!(
            allows("http://127.0.0.1:*", "http://127.0.0.1:9001"),
            Some(Allowance::Named)
        );
    }

    #[test]
    fn wildcards() {
        assert_eq!(
            allows("https://*.example.org:443", "https://a.b.example.org"),
            Some(Allowance::Wildcard)
        );
        assert_eq!(allows("https://*.example.org", "https://example.org"), None);
        assert_eq!(
            allows("https://*.example.org", "https://badexample.org"),
            None
        );
        assert_eq!(
            allows("https://*.example.org", "https://example.org.evil.com"),
            None
        );
        assert_eq!(allows("https://*.example.org", "https://127.0.0.1"), None);
        assert_eq!(
            allows("*://*:*", "http://169.254.169.254"),
            Some(Allowance::Wildcard)
        );
        assert_eq!(allows("https://*", "https://x.test:444"), None);
    }

    #[test]
    fn names_are_compared_as_urls_compare_them() {
        assert_eq!(
            allows("https://API.Example.com.", "https://api.example.COM"),
            Some(Allowance::Named)
        );
        assert_eq!(
            allows("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080"),
            Some(Allowance::Named)
        );
        // A name is never an address, however it resolves.
        assert_eq!(allows("http://127.0.0.1", "http://localhost"), None);
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://ex*ample.com",
            "https://*.127.0.0.1",
            "https://example.com:0",
            "https://example.com:99999",
            "https://[::1",
            "https://exa mple.com",
            "https://127.1",
            "https://",
        ] {
            let error = bad.parse::<HostPattern>().expect_err("a bad pattern");
            assert_eq!(error.text, bad, "{error}");
        }
    }

    #[test]
    fn urls_and_authorities() {
        assert!(Target::from_url("https://user:pw@example.com/").is_err());
        assert!(Target::from_url("file:///etc/passwd").is_err());
        assert!(Target::from_url("/relative/path").is_err());
        assert_eq!(
            target("https://example.com?x=1").to_string(),
            "https://example.com:443"
        );
        assert_eq!(
            Target::new(Scheme::Http, "[::1]:81")
                .expect("an authority")
                .to_string(),
            "http://[::1]:81"
        );
    }

    #[test]
    fn a_list_takes_the_strongest_allowance() {
        let list = AllowList::parse(&["*://*:*", "http://127.0.0.1:9000"]).expect("patterns");
        assert_eq!(
            list.allows(&target("http://127.0.0.1:9000")),
            Some(Allowance::Named)
        );
        assert_eq!(
            list.allows(&target("http://127.0.0.1:9001")),
            Some(Allowance::Wildcard)
        );
        assert_eq!(AllowList::default().allows(&target("http://a.test")), None);
        assert!(AllowList::parse(&["https://ok.test", "nope"]).is_err());
    }
}
