//! Where a callback may connect: never into the platform. A callback URL is a tenant's input, so
//! the gateway connects only to addresses outside loopback, private, link-local (cloud metadata
//! included), CGNAT, unique-local, multicast and the other special-use ranges — unless an
//! operator lists them in `GATEWAY_CALLBACK_ALLOW` (CIDRs, for tests and private setups).
//!
//! The check is made on the address actually connected: names are resolved here
//! ([`PolicyResolver`], reqwest's resolver) and only the vetted addresses are handed to the
//! connector, so a name that answers a public address to a first lookup and 127.0.0.1 to a
//! second (DNS rebinding) never reaches 127.0.0.1. IP literals are checked before the request
//! ([`check_target`]); URLs with credentials (`user:pass@`) are refused outright.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

/// The variable listing ranges callbacks may reach although they are special-use.
pub const ALLOW_ENV: &str = "GATEWAY_CALLBACK_ALLOW";

/// Why a callback target was refused: permanent, it is never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The ranges a callback may reach in spite of being special-use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// No exceptions: only public addresses.
    pub fn public_only() -> AddressPolicy {
        AddressPolicy::default()
    }

    /// From `GATEWAY_CALLBACK_ALLOW`: comma-separated CIDRs or single addresses (empty: none).
    pub fn parse(raw: &str) -> Result<AddressPolicy, String> {
        let mut allow = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => part.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("{part:?} is not a CIDR (e.g. 10.0.0.0/8) or an address")
                })?,
            };
            allow.push(net.trunc());
        }
        Ok(AddressPolicy { allow })
    }

    /// `None` when a callback may connect to `ip`, else the kind of range that forbids it.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        special_range(ip)
    }

    /// The allowed ranges, for logs.
    pub fn allowed(&self) -> String {
        let v: Vec<String> = self.allow.iter().map(IpNet::to_string).collect();
        v.join(",")
    }
}

/// The special-use range `ip` belongs to, if any (RFC 6890 and friends).
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "this-network (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local / cloud metadata (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved / broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that embed an IPv4 address are judged by it (or refused when they can carry any).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified (::)",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback (::1)",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return special_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard (100::/64)",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x2002, hi, lo, ..] => return special_v4(embedded(hi, lo)),
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// A URL as it may be logged: `scheme://host:port/path`, without credentials, query or
/// fragment.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0),
            u.path()
        ),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// What is checked before a callback request: an http(s) URL without credentials whose host,
/// when it is an IP literal, the policy permits (names are checked by [`PolicyResolver`] on
/// every connection).
pub fn check_target(url: &Url, policy: &AddressPolicy) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused(format!(
            "only http and https callbacks are made, not {:?}",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused(
            "callback URLs may not carry credentials (user:password@)".to_owned(),
        ));
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(Refused("the callback URL has no host".to_owned())),
    };
    match policy.refuses(ip) {
        None => Ok(()),
        Some(range) => Err(Refused(format!(
            "callbacks may not reach {ip}: it is {range}"
        ))),
    }
}

/// The addresses of `host` a callback may connect to: `addrs` less those the policy refuses;
/// refused when none is left.
pub fn vet(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, Refused> {
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for a in addrs {
        match policy.refuses(a.ip()) {
            None => kept.push(a),
            Some(range) => refused.push(format!("{} ({range})", a.ip())),
        }
    }
    if kept.is_empty() {
        return Err(Refused(if refused.is_empty() {
            format!("{host} has no address")
        } else {
            format!(
                "callbacks may not reach {host}: it resolves to {}",
                refused.join(", ")
            )
        }));
    }
    Ok(kept)
}

/// reqwest's resolver for callbacks: resolves with the system resolver and hands the connector
/// only the addresses the policy permits.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> PolicyResolver {
        PolicyResolver { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = vet(&host, found, &policy)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The policy refusal somewhere in an error's chain, if that is what it is.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_and_public_ones_are_not() {
        let p = AddressPolicy::public_only();
        for bad in [
            "127.0.0.1",
            "127.5.6.7",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.0.192",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(p.refuses(ip(bad)).is_some(), "{bad} must be refused");
        }
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "193.0.0.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(p.refuses(ip(good)), None, "{good} is public");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_ranges() {
        let p = AddressPolicy::parse(" 127.0.0.1/32, 10.0.0.0/8 ,::1").unwrap();
        assert_eq!(p.refuses(ip("127.0.0.1")), None);
        assert_eq!(p.refuses(ip("10.200.0.1")), None);
        assert_eq!(p.refuses(ip("::1")), None);
        assert!(p.refuses(ip("127.0.0.2")).is_some());
        assert!(p.refuses(ip("192.168.0.1")).is_some());
        assert_eq!(p.allowed(), "127.0.0.1/32,10.0.0.0/8,::1/128");
        assert_eq!(AddressPolicy::parse("").unwrap(), AddressPolicy::default());
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/8;"] {
            assert!(AddressPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_with_credentials_or_special_literals_are_refused() {
        let p = AddressPolicy::public_only();
        let check = |u: &str| check_target(&Url::parse(u).unwrap(), &p);
        assert!(check("http://guest:guest@127.0.0.1:15672/api/bindings").is_err());
        assert!(check("http://guest@example.com/").is_err());
        assert!(check("https://:pw@example.com/").is_err());
        assert!(check("http://127.0.0.1:9/").is_err());
        // Other spellings of loopback, normalised by the URL parser.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("http://[::ffff:7f00:1]/").is_err());
        assert!(check("http://[::1]:80/").is_err());
        assert!(check("http://169.254.169.254/latest/meta-data/").is_err());
        assert!(check("https://example.com/hook?x=1").is_ok());
        assert!(check("http://8.8.8.8/").is_ok());
        let allow = AddressPolicy::parse("127.0.0.1/32").unwrap();
        assert!(check_target(&Url::parse("http://127.0.0.1:9/").unwrap(), &allow).is_ok());
        // Credentials are refused whatever the allow-list says.
        assert!(check_target(&Url::parse("http://u:p@127.0.0.1:9/").unwrap(), &allow).is_err());
    }

    #[test]
    fn resolved_addresses_are_vetted_one_by_one() {
        let p = AddressPolicy::public_only();
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        // A rebinding answer mixing a public and a loopback address keeps only the public one.
        let kept = vet("rebind.example", [sa("93.184.216.34"), sa("127.0.0.1")], &p).unwrap();
        assert_eq!(kept, vec![sa("93.184.216.34")]);
        let e = vet("evil.example", [sa("127.0.0.1"), sa("::1")], &p).unwrap_err();
        assert!(e.0.contains("127.0.0.1") && e.0.contains("loopback"), "{e}");
        assert!(vet("empty.example", [], &p).is_err());
    }

    #[test]
    fn logged_urls_lose_credentials_and_queries() {
        assert_eq!(
            redact("http://guest:guest@127.0.0.1:15672/api/x?token=s3cret#frag"),
            "http://127.0.0.1:15672/api/x"
        );
        assert_eq!(redact("https://example.com"), "https://example.com:443/");
        assert_eq!(redact("::"), "<not a URL>");
    }

    /// A loopback listener that counts connections and answers each with an empty 200.
    async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = n.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (port, n)
    }

    fn client(policy: AddressPolicy) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(policy))))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_never_connected() {
        let (port, connections) = counting_listener().await;
        let e = client(AddressPolicy::public_only())
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        let why = refusal(&e).expect("refused by the policy, not a network error");
        assert!(why.0.contains("loopback"), "{why}");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Allowed explicitly, the same name connects (the listener is real).
        let allow = AddressPolicy::parse("127.0.0.1/32").unwrap();
        let resp = client(allow)
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn refusals_are_found_in_error_chains() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Outer(#[source] Refused);
        let e = Outer(Refused("no".into()));
        assert_eq!(refusal(&e), Some(&Refused("no".into())));
        let io = std::io::Error::other("x");
        assert_eq!(refusal(&io), None);
    }
}
