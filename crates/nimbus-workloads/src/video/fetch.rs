//! Fetching a video job's images over HTTP(S) for a worker, safely: only hosts on the worker's
//! allow-list (`--allow-fetch HOST[:PORT]`, or `*` for any public host), loopback, private and
//! link-local addresses refused unless the allow-list names that address itself, checked after
//! resolving (the connection goes to the checked address, so a name cannot change between the
//! check and the connection) and again at every redirect; a size limit, a time limit and a
//! redirect limit; no proxy from the environment.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;

/// One allow-list entry: a host (a name or an address) with an optional port, or any public host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// `*`: any host whose addresses are all public.
    AnyPublic,
    /// `HOST[:PORT]`.
    Host {
        /// The name (lowercase) or address.
        host: String,
        /// The port; any port when absent.
        port: Option<u16>,
    },
}

impl std::str::FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--allow-fetch `{text}`: {why} (HOST, HOST:PORT, [IPv6]:PORT or *)")
        };
        if text == "*" {
            return Ok(Self::AnyPublic);
        }
        if text.is_empty() || text.contains('/') || text.contains('@') {
            return Err(bad("not a host"));
        }
        // Url parses and normalizes hosts (IDNA, IPv6 brackets, case) as the fetch will.
        let url = Url::parse(&format!("http://{text}/")).map_err(|e| bad(&e.to_string()))?;
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let explicit_port = text
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']') && p.chars().all(|c| c.is_ascii_digit()));
        let port = if explicit_port {
            Some(url.port().unwrap_or(80))
        } else {
            None
        };
        Ok(Self::Host { host, port })
    }
}

impl std::fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AnyPublic => f.write_str("*"),
            Self::Host { host, port: None } => f.write_str(host),
            Self::Host {
                host,
                port: Some(p),
            } if host.contains(':') => write!(f, "[{host}]:{p}"),
            Self::Host {
                host,
                port: Some(p),
            } => write!(f, "{host}:{p}"),
        }
    }
}

/// What a worker may fetch, and the bounds on each fetch.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Allowed hosts; empty allows nothing.
    pub allow: Vec<AllowEntry>,
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    /// The longest one fetch (with its redirects) may take.
    pub timeout: Duration,
    /// The most redirects followed.
    pub max_redirects: usize,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(20),
            max_redirects: 5,
        }
    }
}

/// Why a fetch failed; the message names the URL and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Refused before any connection: not an http(s) URL, not on the allow-list, or a private
    /// address.
    #[error("{0}")]
    Refused(String),
    /// The server answered what no retry changes (4xx but 429), or the body is over the limit.
    #[error("{0}")]
    Failed(String),
    /// The network or the server failed in a way a later try may not (connection, time limit,
    /// 5xx, 429).
    #[error("{0}")]
    Unavailable(String),
}

impl FetchPolicy {
    /// Why `url` may not be fetched, before any connection (its resolved addresses are checked
    /// when connecting).
    pub fn refusal(&self, url: &Url) -> Option<String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Some(format!(
                "`{url}`: only http and https URLs are fetched, not {}",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Some(format!("`{url}`: URLs with credentials are not fetched"));
        }
        let Some(host) = url.host_str() else {
            return Some(format!("`{url}` has no host"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(80);
        let literal: Option<IpAddr> = host.parse().ok();
        let named = self.allow.iter().any(|e| match e {
            AllowEntry::Host { host: h, port: p } => {
                h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port)
            }
            AllowEntry::AnyPublic => false,
        });
        let any_public = self.allow.contains(&AllowEntry::AnyPublic);
        match literal {
            // An address is fetched when the list names it, or when it is public and `*` is on.
            Some(ip) if named || (any_public && is_public(ip)) => None,
            Some(ip) if any_public => Some(format!(
                "`{url}`: {ip} is {}; only an --allow-fetch naming it allows it",
                class_of(ip)
            )),
            _ if named || any_public => None,
            _ => Some(format!(
                "`{url}`: host {host}:{port} is not on this worker's allow-list ({})",
                self.describe()
            )),
        }
    }

    fn describe(&self) -> String {
        if self.allow.is_empty() {
            return "empty: start the worker with --allow-fetch HOST[:PORT]".into();
        }
        let entries: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        format!("--allow-fetch {}", entries.join(", "))
    }

    /// A client that follows this policy.
    pub fn client(&self) -> Result<Fetcher, FetchError> {
        let policy = Arc::new(self.clone());
        let redirects = policy.clone();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PublicOnly))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > redirects.max_redirects {
                    let why = format!("more than {} redirects", redirects.max_redirects);
                    return attempt.error(Refusal(why));
                }
                match redirects.refusal(attempt.url()) {
                    Some(why) => attempt.error(Refusal(format!("redirected to {why}"))),
                    None => attempt.follow(),
                }
            }))
            .build()
            .map_err(|e| FetchError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Fetcher { client, policy })
    }
}

/// Fetches under a [`FetchPolicy`]; cheap to clone, shares its connections.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
}

impl Fetcher {
    /// The body at `url`.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let parsed = Url::parse(url)
            .map_err(|e| FetchError::Refused(format!("`{url}` is not a URL: {e}")))?;
        if let Some(why) = self.policy.refusal(&parsed) {
            return Err(FetchError::Refused(why));
        }
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| explain(url, &e))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::Unavailable(format!(
                "`{url}` answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("`{url}` answered {status}")));
        }
        let max = self.policy.max_bytes;
        let too_large = || FetchError::Failed(format!("`{url}` is over the limit of {max} bytes"));
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| explain(url, &e))? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// A refusal raised inside the client (a redirect, a resolved address), found again in the
/// error's source chain.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

fn explain(url: &str, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refusal) = s.downcast_ref::<Refusal>() {
            return FetchError::Refused(format!("`{url}`: {refusal}"));
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Unavailable(format!("`{url}`: timed out"));
    }
    if e.is_connect() || e.is_request() || e.is_body() {
        return FetchError::Unavailable(format!("`{url}`: {}", innermost(e)));
    }
    FetchError::Failed(format!("`{url}`: {}", innermost(e)))
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// Resolves names and refuses any that resolves to an address that is not public (only an
/// address named on the allow-list is fetched from a private network, and addresses skip this).
#[derive(Debug)]
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(Refusal(format!("cannot resolve {host}: {e}"))))?
                .collect();
            if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
                let ip = private.ip();
                let why =
                    format!(
                    "{host} resolves to {ip}, {}; name the address to allow it: --allow-fetch {}",
                    class_of(ip),
                    if ip.is_ipv6() { format!("[{ip}]:PORT") } else { format!("{ip}:PORT") }
                );
                return Err(Box::new(Refusal(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, unspecified, multicast, documentation or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    class(ip).is_none()
}

fn class_of(ip: IpAddr) -> &'static str {
    class(ip).unwrap_or("a public address")
}

fn class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

fn class_v4(v4: std::net::Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    if v4.is_loopback() {
        Some("a loopback address")
    } else if v4.is_private() {
        Some("a private address")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || a >= 240
        || (a, b, c) == (192, 0, 0)
        || (a == 198 && (b == 18 || b == 19))
    {
        Some("a reserved address")
    } else {
        None
    }
}

fn class_v6(v6: std::net::Ipv6Addr) -> Option<&'static str> {
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| {
        std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
    };
    // Addresses that carry an IPv4 address a gateway reaches for them: judged by that address.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return class_v4(v4);
    }
    if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return class_v4(embedded(s[6], s[7])); // IPv4-compatible (deprecated)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return class_v4(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return class_v4(embedded(s[1], s[2])); // 6to4
    }
    if v6.is_loopback() {
        Some("a loopback address")
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Some("a private (unique or site local) address")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if v6.is_unspecified()
        || v6.is_multicast()
        || (s[0], s[1]) == (0x2001, 0xdb8)
        || (s[0], s[1]) == (0x2001, 0) // Teredo
        || (s[0], s[1]) == (0x64, 0xff9b) // local-use NAT64
        || s[..4] == [0x100, 0, 0, 0]
    {
        Some("a reserved address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> FetchPolicy {
        FetchPolicy {
            allow: entries.iter().map(|e| e.parse().unwrap()).collect(),
            ..FetchPolicy::default()
        }
    }

    fn refusal(p: &FetchPolicy, url: &str) -> Option<String> {
        p.refusal(&Url::parse(url).unwrap())
    }

    #[test]
    fn allow_entries_parse_and_bad_ones_are_named() {
        assert_eq!(
            "Example.COM:8080".parse(),
            Ok(AllowEntry::Host {
                host: "example.com".into(),
                port: Some(8080)
            })
        );
        assert_eq!(
            "[::1]:9000".parse::<AllowEntry>().unwrap().to_string(),
            "[::1]:9000"
        );
        assert_eq!("*".parse(), Ok(AllowEntry::AnyPublic));
        for bad in ["", "http://x/", "a b", "x:99999", "user@host"] {
            let e = bad.parse::<AllowEntry>().unwrap_err();
            assert!(e.contains("--allow-fetch"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_allow_list_decides_before_any_connection() {
        let none = FetchPolicy::default();
        assert!(refusal(&none, "http://example.com/a.png")
            .unwrap()
            .contains("--allow-fetch HOST"));
        let local = policy(&["127.0.0.1:8000", "images.example.com"]);
        assert_eq!(refusal(&local, "http://127.0.0.1:8000/a.png"), None);
        assert!(refusal(&local, "http://127.0.0.1:8001/a.png")
            .unwrap()
            .contains("127.0.0.1:8001 is not on this worker's allow-list"));
        assert_eq!(refusal(&local, "https://IMAGES.example.com/x"), None);
        assert!(refusal(&local, "file:///etc/passwd")
            .unwrap()
            .contains("only http and https"));
        assert!(refusal(&local, "http://u:p@images.example.com/")
            .unwrap()
            .contains("credentials"));
        let any = policy(&["*"]);
        assert_eq!(refusal(&any, "http://93.184.215.14/x"), None);
        assert_eq!(
            refusal(&any, "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x"),
            None
        );
        assert_eq!(
            refusal(&any, "http://[64:ff9b::5db8:d70e]/x"),
            None,
            "NAT64 of a public address"
        );
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://[64:ff9b::a00:5]/",
            "http://[2002:7f00:1::]/",
            "http://[::10.0.0.1]/",
            "http://[fec0::1]/",
            "http://[2001::1]/",
            "http://198.18.0.1/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let why = refusal(&any, private).unwrap();
            assert!(
                why.contains("only an --allow-fetch naming it"),
                "{private}: {why}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_private_address_is_refused() {
        let fetcher = policy(&["localhost"]).client().unwrap();
        let err = fetcher.get("http://localhost:1/x.png").await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Refused(m) if m.contains("resolves to") && m.contains("loopback")),
            "{err}"
        );
    }
}
