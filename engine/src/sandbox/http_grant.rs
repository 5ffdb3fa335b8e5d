//! The `http` grant: which outbound HTTP requests a step may send.
//!
//! Owns the grant's syntax (as a manifest, a policy's `allow_http` and
//! `--allow-http` spell it), matching a request against it, whether a
//! policy's grant covers a step's, and which connected addresses are off
//! limits unless a grant names them. Pure logic: it opens no socket and
//! resolves no name (the sandbox's request hook does both, then asks here).
//!
//! Invariants: a grant is parsed once into [`HttpGrant`], lower-cased, with
//! its port made explicit; a request is matched on scheme, host, port and
//! method, all four, never on a `Host` header; a host name grant never
//! allows a loopback, link-local, private or unique-local address (only a
//! grant naming that IP does), so DNS cannot turn a public grant into a
//! door to the host's own network.

use std::fmt;
use std::net::IpAddr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this name (lower case, no trailing dot).
    Name(String),
    /// Any name ending in `.` + this suffix (`*.example.com`); not the
    /// suffix itself.
    Subdomains(String),
    /// This address, and only it (which also allows it when it is
    /// loopback or private: the grant names it).
    Ip(IpAddr),
}

impl HostPattern {
    fn matches(&self, host: &RequestHost) -> bool {
        match (self, host) {
            (HostPattern::Name(n), RequestHost::Name(h)) => n == h,
            (HostPattern::Subdomains(s), RequestHost::Name(h)) => h
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Ip(a), RequestHost::Ip(b)) => a == b,
            _ => false,
        }
    }

    /// Every host this one matches is matched by `wider`.
    fn within(&self, wider: &HostPattern) -> bool {
        match (self, wider) {
            (HostPattern::Subdomains(s), HostPattern::Subdomains(w)) => {
                s == w || HostPattern::Subdomains(w.clone()).matches(&RequestHost::Name(s.clone()))
            }
            (HostPattern::Subdomains(_), _) => false,
            (HostPattern::Name(n), wider) => wider.matches(&RequestHost::Name(n.clone())),
            (HostPattern::Ip(ip), wider) => wider.matches(&RequestHost::Ip(*ip)),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One grant: requests to this scheme, host and port, with these methods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpGrant {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
    /// Upper-case method names; `None`: any method.
    methods: Option<Vec<String>>,
    /// Headers the host attaches to every request this grant allows
    /// (lower-case names), their values templates over the run's secrets.
    headers: Vec<(String, Vec<Part>)>,
}

/// A piece of a header template: text, or a secret's value by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Text(String),
    Secret(String),
}

/// A grant that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "http grant {input:?}: {reason} (write e.g. \"api.example.com\", \
     \"https://*.example.com:8443\" or {{ host = \"http://127.0.0.1:8080\", methods = [\"GET\"] }})"
)]
pub struct HttpGrantError {
    input: String,
    reason: String,
}

/// The host of a request, as its URI names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHost {
    Name(String),
    Ip(IpAddr),
}

impl RequestHost {
    /// From a URI's host (brackets around IPv6 allowed), lower-cased.
    pub fn parse(host: &str) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => RequestHost::Ip(ip),
            Err(_) => RequestHost::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

/// An outbound request, as far as a grant looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub scheme: Scheme,
    pub host: RequestHost,
    pub port: u16,
    pub method: String,
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl HttpGrant {
    /// From `[scheme://]host[:port]`, with `methods` (any, if `None`). A
    /// scheme left out is `https`; a port left out is the scheme's.
    pub fn parse(text: &str, methods: Option<&[String]>) -> Result<Self, HttpGrantError> {
        let fail = |reason: &str| HttpGrantError {
            input: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match text.split_once("://") {
            None => (Scheme::Https, text),
            Some((s, rest)) => match s.to_ascii_lowercase().as_str() {
                "https" => (Scheme::Https, rest),
                "http" => (Scheme::Http, rest),
                _ => return Err(fail("the scheme must be http or https")),
            },
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(fail(
                "a grant names a host, not a path, query or user (those are not matched)",
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| fail("an IPv6 address needs its closing ]"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| fail("junk after ]"))?),
            };
            (format!("[{ip}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(fail("the port must be a number from 1 to 65535")),
            },
        };
        let host = match RequestHost::parse(&host) {
            RequestHost::Ip(ip) => HostPattern::Ip(ip),
            RequestHost::Name(name) => {
                let (wild, name) = match name.strip_prefix("*.") {
                    Some(rest) => (true, rest.to_owned()),
                    None => (false, name),
                };
                let labels_ok = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| is_token(l) && l.len() <= 63);
                if !labels_ok {
                    return Err(fail(
                        "the host must be a DNS name (letters, digits, - and .), `*.` and a name, or an IP address",
                    ));
                }
                if wild {
                    HostPattern::Subdomains(name)
                } else {
                    HostPattern::Name(name)
                }
            }
        };
        let methods = match methods {
            None => None,
            Some([]) => {
                return Err(fail(
                    "methods = [] allows nothing; leave it out to allow any",
                ));
            }
            Some(list) => {
                let mut upper = Vec::with_capacity(list.len());
                for m in list {
                    if !m.bytes().all(|b| b.is_ascii_alphabetic()) || m.is_empty() {
                        return Err(fail(&format!("{m:?} is not an HTTP method")));
                    }
                    upper.push(m.to_ascii_uppercase());
                }
                upper.sort();
                upper.dedup();
                Some(upper)
            }
        };
        Ok(Self {
            scheme,
            host,
            port,
            methods,
            headers: Vec::new(),
        })
    }

    /// This grant, attaching `headers` (name, template) to the requests it
    /// allows. A template is text with `${secrets.NAME}` in it: the host
    /// puts the secret's value there when it sends the request, so the task
    /// never holds it.
    pub fn with_headers(mut self, headers: &[(String, String)]) -> Result<Self, HttpGrantError> {
        let shown = self.to_string();
        let fail = |reason: String| HttpGrantError {
            input: shown.clone(),
            reason,
        };
        for (name, template) in headers {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                || matches!(
                    lower.as_str(),
                    "host" | "content-length" | "transfer-encoding" | "connection"
                )
            {
                return Err(fail(format!(
                    "{name:?} is not a header the host can attach"
                )));
            }
            let mut parts = Vec::new();
            let mut rest = template.as_str();
            while let Some(start) = rest.find("${") {
                if start > 0 {
                    parts.push(Part::Text(rest[..start].to_owned()));
                }
                let after = &rest[start + 2..];
                let end = after.find('}').ok_or_else(|| {
                    fail(format!("header {name}: an unclosed ${{ in {template:?}"))
                })?;
                let secret = after[..end]
                    .strip_prefix("secrets.")
                    .filter(|n| is_token(&n.replace('_', "-")));
                let Some(secret) = secret else {
                    return Err(fail(format!(
                        "header {name}: write ${{secrets.NAME}} to put a secret in it, not ${{{}}}",
                        &after[..end]
                    )));
                };
                parts.push(Part::Secret(secret.to_owned()));
                rest = &after[end + 1..];
            }
            if !rest.is_empty() {
                parts.push(Part::Text(rest.to_owned()));
            }
            if template.contains(['\r', '\n', '\0']) {
                return Err(fail(format!(
                    "header {name}: a value cannot hold line breaks or NUL"
                )));
            }
            self.headers.push((lower, parts));
        }
        Ok(self)
    }

    /// Does the host attach headers to what this grant allows?
    pub fn has_headers(&self) -> bool {
        !self.headers.is_empty()
    }

    /// The secrets this grant's headers use, by name.
    pub fn header_secrets(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().flat_map(|(_, parts)| {
            parts.iter().filter_map(|p| match p {
                Part::Secret(name) => Some(name.as_str()),
                Part::Text(_) => None,
            })
        })
    }

    /// The headers to attach, their secrets filled in from `value`;
    /// `Err(name)` names a secret that has no value.
    pub fn render_headers<'v>(
        &self,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<Vec<(String, String)>, String> {
        self.headers
            .iter()
            .map(|(name, parts)| {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Secret(secret) => {
                            text.push_str(value(secret).ok_or_else(|| secret.clone())?)
                        }
                    }
                }
                Ok((name.clone(), text))
            })
            .collect()
    }

    /// Does this grant allow `request`?
    pub fn allows(&self, request: &Request) -> bool {
        self.scheme == request.scheme
            && self.port == request.port
            && self.host.matches(&request.host)
            && self
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case(&request.method)))
    }

    /// Does `policy` allow everything this grant does? (Checked at plan
    /// time: a step's grant must lie within one of the policy's.)
    pub fn within(&self, policy: &HttpGrant) -> bool {
        self.scheme == policy.scheme
            && self.port == policy.port
            && self.host.within(&policy.host)
            && match (&self.methods, &policy.methods) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(mine), Some(theirs)) => mine.iter().all(|m| theirs.contains(m)),
            }
    }

    /// Does this grant reach every host, port and scheme of `wanted` (for
    /// some method)? What a task's `describe` says it needs is checked so.
    pub fn reaches(&self, wanted: &HttpGrant) -> bool {
        self.scheme == wanted.scheme && self.port == wanted.port && wanted.host.within(&self.host)
    }

    /// May a request this grant allowed connect to `addr`? A public address
    /// always; any other only when the grant names that very address.
    pub fn may_connect(&self, addr: IpAddr) -> bool {
        is_public(addr) || self.host == HostPattern::Ip(addr)
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)?;
        if let Some(methods) = &self.methods {
            write!(f, " ({})", methods.join(", "))?;
        }
        if !self.headers.is_empty() {
            let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
            write!(f, " with {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// Is `addr` on the public internet: not loopback, link-local (the cloud
/// metadata address 169.254.169.254 among them), private, unique-local,
/// shared (CGNAT), documentation, benchmarking, multicast, broadcast or
/// unspecified? IPv4-mapped IPv6 addresses are judged as the IPv4 address.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> HttpGrant {
        HttpGrant::parse(text, None).unwrap()
    }

    fn request(scheme: Scheme, host: &str, port: u16, method: &str) -> Request {
        Request {
            scheme,
            host: RequestHost::parse(host),
            port,
            method: method.into(),
        }
    }

    #[test]
    fn a_bare_host_is_https_on_443_and_is_written_back_whole() {
        let g = grant("API.Example.com");
        assert_eq!(g.to_string(), "https://api.example.com:443");
        assert!(g.allows(&request(Scheme::Https, "api.example.com", 443, "GET")));
        assert!(g.allows(&request(Scheme::Https, "API.EXAMPLE.COM.", 443, "POST")));
        let g = grant("http://127.0.0.1:8080");
        assert_eq!(g.to_string(), "http://127.0.0.1:8080");
        assert_eq!(grant("http://[::1]:81").to_string(), "http://[::1]:81");
    }

    #[test]
    fn scheme_host_port_and_method_must_each_match() {
        let methods = ["get".to_owned()];
        let g = HttpGrant::parse("internal.example", Some(&methods)).unwrap();
        let ok = request(Scheme::Https, "internal.example", 443, "GET");
        assert!(g.allows(&ok));
        for (what, other) in [
            (
                "scheme",
                request(Scheme::Http, "internal.example", 443, "GET"),
            ),
            ("host", request(Scheme::Https, "evil.example", 443, "GET")),
            (
                "suffix",
                request(Scheme::Https, "xinternal.example", 443, "GET"),
            ),
            (
                "port",
                request(Scheme::Https, "internal.example", 8443, "GET"),
            ),
            (
                "method",
                request(Scheme::Https, "internal.example", 443, "DELETE"),
            ),
        ] {
            assert!(!g.allows(&other), "another {what} passed: {other:?}");
        }
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        let g = grant("https://*.s3.amazonaws.com:443");
        assert!(g.allows(&request(
            Scheme::Https,
            "bucket.s3.amazonaws.com",
            443,
            "GET"
        )));
        assert!(g.allows(&request(Scheme::Https, "a.b.s3.amazonaws.com", 443, "GET")));
        assert!(!g.allows(&request(Scheme::Https, "s3.amazonaws.com", 443, "GET")));
        assert!(!g.allows(&request(Scheme::Https, "evils3.amazonaws.com", 443, "GET")));
        assert!(!g.allows(&request(Scheme::Https, "s3.amazonaws.com.evil", 443, "GET")));
    }

    #[test]
    fn a_policy_covers_a_grant_only_when_it_allows_all_of_it() {
        let policy = grant("*.example.com");
        assert!(grant("api.example.com").within(&policy));
        assert!(grant("*.eu.example.com").within(&policy));
        assert!(!grant("example.com").within(&policy));
        assert!(!grant("*.com").within(&policy));
        assert!(!grant("http://api.example.com").within(&policy), "scheme");
        assert!(!grant("api.example.com:8443").within(&policy), "port");
        let get = ["GET".to_owned()];
        let get_post = ["GET".to_owned(), "POST".to_owned()];
        let narrow = HttpGrant::parse("api.example.com", Some(&get)).unwrap();
        let wide = HttpGrant::parse("api.example.com", Some(&get_post)).unwrap();
        assert!(narrow.within(&wide));
        assert!(!wide.within(&narrow));
        assert!(!grant("api.example.com").within(&narrow), "any method");
        assert!(!grant("10.0.0.1").within(&policy));
        assert!(grant("10.0.0.1").within(&grant("10.0.0.1")));
    }

    #[test]
    fn private_addresses_need_a_grant_naming_them() {
        let named = grant("api.example.com");
        for addr in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_public(ip), "{addr} counted as public");
            assert!(!named.may_connect(ip), "a name grant reaches {addr}");
        }
        assert!(grant("http://127.0.0.1:8080").may_connect("127.0.0.1".parse().unwrap()));
        assert!(!grant("http://127.0.0.1:8080").may_connect("127.0.0.2".parse().unwrap()));
        for addr in ["93.184.216.34", "2606:4700::1111", "1.1.1.1"] {
            assert!(named.may_connect(addr.parse().unwrap()), "{addr} refused");
        }
    }

    #[test]
    fn malformed_grants_are_refused_with_what_to_write() {
        for bad in [
            "",
            "ftp://example.com",
            "example.com/path",
            "user@example.com",
            "example.com:0",
            "example.com:99999",
            "exa mple.com",
            "*.",
            "[::1",
            "*",
        ] {
            let e = HttpGrant::parse(bad, None).unwrap_err().to_string();
            assert!(e.contains("write e.g."), "{bad:?}: {e}");
        }
        let e = HttpGrant::parse("example.com", Some(&[])).unwrap_err();
        assert!(e.to_string().contains("allows nothing"), "{e}");
        let e = HttpGrant::parse("example.com", Some(&["GE T".to_owned()])).unwrap_err();
        assert!(e.to_string().contains("not an HTTP method"), "{e}");
    }

    #[test]
    fn header_templates_fill_in_secrets_and_refuse_what_cannot_be_sent() {
        let headers = [
            (
                "Authorization".to_owned(),
                "Bearer ${secrets.API_TOKEN}".to_owned(),
            ),
            ("X-Pair".to_owned(), "${secrets.A}:${secrets.B}!".to_owned()),
        ];
        let g = grant("api.example.com").with_headers(&headers).unwrap();
        assert_eq!(
            g.header_secrets().collect::<Vec<_>>(),
            ["API_TOKEN", "A", "B"]
        );
        let values = |name: &str| match name {
            "API_TOKEN" => Some("t0k"),
            "A" => Some("a"),
            "B" => Some("b"),
            _ => None,
        };
        assert_eq!(
            g.render_headers(values).unwrap(),
            [
                ("authorization".to_owned(), "Bearer t0k".to_owned()),
                ("x-pair".to_owned(), "a:b!".to_owned())
            ]
        );
        assert_eq!(g.render_headers(|_| None).unwrap_err(), "API_TOKEN");
        // Named in the grant as written, without any value.
        assert_eq!(
            g.to_string(),
            "https://api.example.com:443 with authorization, x-pair"
        );
        for (name, value) in [
            ("Host", "x"),
            ("bad name", "x"),
            ("x-a", "${env.HOME}"),
            ("x-a", "${secrets.A"),
            ("x-a", "a\r\nInjected: yes"),
        ] {
            let e = grant("api.example.com")
                .with_headers(&[(name.to_owned(), value.to_owned())])
                .unwrap_err();
            assert!(e.to_string().contains("write e.g."), "{name}: {value}: {e}");
        }
    }
}
