//! Where webhooks may go (SSRF policy). A webhook URL comes from a tenant, so without a
//! policy any tenant could make Herald POST into its own network: cloud metadata
//! (169.254.169.254), admin ports on loopback, private services. Refused unless
//! allow-listed with `--webhook-allow-nets`: loopback, RFC 1918 private, link-local,
//! carrier-grade NAT, unspecified, multicast, broadcast, documentation, benchmarking and
//! reserved ranges, IPv6 unique-local and link-local, and IPv4 addresses mapped into IPv6.
//!
//! Checked twice: at the door for IP literals (422 naming `recipient`), and by the webhook
//! client's [`PolicyConnector`] on every connection: IP literals directly, host names on
//! every address they resolve to ([`PolicyResolver`]), so a name that resolves (or
//! rebinds) to a refused address is refused too; a refusal is permanent (dead letter with
//! the reason; a replay after allow-listing delivers it). Redirects are never followed, so
//! a public URL cannot bounce a request inward.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;

/// The webhook egress policy (where webhooks may go): public addresses, plus the
/// allow-listed networks.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// Allows public addresses only (the default).
pub static PUBLIC_ONLY: EgressPolicy = EgressPolicy { allow: Vec::new() };

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {ip} is {class}, refused by the webhook destination policy (allow-list it with --webhook-allow-nets)")]
pub struct Refused {
    pub ip: IpAddr,
    pub class: &'static str,
}

impl EgressPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        EgressPolicy { allow }
    }

    /// Whether delivery may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        match special_class(ip) {
            Some(class) if !self.allow.iter().any(|net| net.contains(&ip)) => {
                Err(Refused { ip, class })
            }
            _ => Ok(()),
        }
    }

    /// The check for a URL whose host is an IP literal; host names pass here and are
    /// checked when resolved.
    pub fn check_uri(&self, uri: &http::Uri) -> Result<(), Refused> {
        let Some(host) = uri.host() else {
            return Ok(());
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }
}

/// IPv4 in IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The class of a non-public address, `None` for a public one.
fn special_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        (0, _, _) => "unspecified",
        (100, 64..=127, _) => "carrier-grade NAT",
        (192, 0, 0) => "IETF protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        _ if first & 0xfe00 == 0xfc00 => "unique-local",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        // Site-local (deprecated), documentation.
        _ if first & 0xffc0 == 0xfec0 => "site-local",
        0x2001 if ip.segments()[1] == 0x0db8 => "documentation",
        // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
        0x0064 if ip.segments()[1] == 0xff9b => {
            let [.., hi, lo] = ip.segments();
            let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            return special_v4(v4);
        }
        _ => return None,
    })
}

/// The DNS resolver of the webhook client: the system resolver, keeping only the addresses
/// the policy permits. A name all of whose addresses are refused fails with [`Refused`]
/// (inside an `io::Error`; see [`refusal_in`]).
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Option<Arc<EgressPolicy>>,
}

impl PolicyResolver {
    /// `None`: no policy (providers the operator configured).
    pub fn new(policy: Option<Arc<EgressPolicy>>) -> Self {
        PolicyResolver { policy }
    }
}

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let Some(policy) = policy else {
                return Ok(resolved.into_iter());
            };
            let mut refused = None;
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match refused {
                Some(refused) if permitted.is_empty() => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    refused,
                )),
                _ => Ok(permitted.into_iter()),
            }
        })
    }
}

/// The connector of the webhook client: hyper's connector resolves names through
/// [`PolicyResolver`] but dials IP literals without asking it, so literals are checked here
/// before dialing. With no policy (the operator's own providers) it is hyper's connector.
#[derive(Clone)]
pub struct PolicyConnector {
    inner: HttpConnector<PolicyResolver>,
    policy: Option<Arc<EgressPolicy>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl PolicyConnector {
    /// TCP without Nagle, connecting within `connect_timeout`, for `http` and `https` URLs
    /// (TLS is layered on top by the caller).
    pub fn new(policy: Option<Arc<EgressPolicy>>, connect_timeout: Duration) -> Self {
        let mut inner = HttpConnector::new_with_resolver(PolicyResolver::new(policy.clone()));
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(connect_timeout));
        inner.enforce_http(false);
        PolicyConnector { inner, policy }
    }
}

impl tower_service::Service<http::Uri> for PolicyConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        if let Some(Err(refused)) = self.policy.as_ref().map(|p| p.check_uri(&uri)) {
            return Box::pin(async move { Err(refused.into()) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The policy refusal somewhere in an error's chain (the HTTP client wraps the
/// connector's and the resolver's errors), if that is why it failed.
pub fn refusal_in(err: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        // io::Error's source() skips its own payload, so look inside it explicitly.
        if let Some(refused) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(refused.clone());
        }
        current = e.source();
    }
    None
}

/// A list of networks, as `--webhook-allow-nets` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nets(pub Vec<IpNet>);

impl std::fmt::Display for Nets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// Comma-separated networks or addresses; empty (as an unset environment variable in a
/// compose file gives it) is none.
pub fn parse_nets(s: &str) -> Result<Nets, String> {
    s.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_net)
        .collect::<Result<_, _>>()
        .map(Nets)
}

/// A CIDR network, or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a network like 10.0.0.0/8 or an address"))
}

/// Where webhooks may go: the settings of the [`EgressPolicy`].
#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// Internal networks webhooks may reach nonetheless (empty: public addresses only).
    pub webhook_allow_nets: Nets,
}

impl EgressConfig {
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::new(self.webhook_allow_nets.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &EgressPolicy, ip: &str) -> bool {
        policy.check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn internal_ranges_are_refused_and_public_ones_allowed() {
        let p = &PUBLIC_ONLY;
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(refused(p, ip), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(p, ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_exactly_its_networks() {
        let p = EgressPolicy::new(vec![
            parse_net("127.0.0.0/8").unwrap(),
            parse_net("10.0.0.7").unwrap(),
        ]);
        assert!(!refused(&p, "127.0.0.1"));
        assert!(!refused(&p, "::ffff:127.0.0.1"));
        assert!(!refused(&p, "10.0.0.7"));
        assert!(refused(&p, "10.0.0.8"));
        assert!(refused(&p, "::1"));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
        assert_eq!(parse_nets("").unwrap(), Nets::default());
        assert_eq!(parse_nets(" 10.0.0.0/8, ::1 ").unwrap().0.len(), 2);
        assert!(parse_nets("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn uri_literals_are_checked_and_names_left_to_the_resolver() {
        let check = |u: &str| PUBLIC_ONLY.check_uri(&u.parse().unwrap());
        assert_eq!(
            check("http://169.254.169.254/latest/meta-data")
                .unwrap_err()
                .class,
            "link-local"
        );
        assert_eq!(check("http://[::1]:8080/x").unwrap_err().class, "loopback");
        assert!(check("https://example.com/hook").is_ok());
        assert!(check("https://93.184.216.34/hook").is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_internal_addresses() {
        use tower_service::Service;
        let mut strict = PolicyResolver::new(Some(Arc::new(EgressPolicy::default())));
        let err = strict
            .call("localhost".parse().unwrap())
            .await
            .expect_err("localhost resolves to loopback");
        let refused = refusal_in(&err).expect("the refusal is found in the error");
        assert!(refused.ip.is_loopback());
        let mut open = PolicyResolver::new(None);
        assert!(open.call("localhost".parse().unwrap()).await.is_ok());
        let mut allowed = PolicyResolver::new(Some(Arc::new(EgressPolicy::new(vec![
            parse_net("127.0.0.0/8").unwrap(),
            parse_net("::1/128").unwrap(),
        ]))));
        assert!(allowed.call("localhost".parse().unwrap()).await.is_ok());
    }
}
