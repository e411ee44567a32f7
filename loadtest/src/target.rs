//! Where the load goes: the WebSocket URL, the API URL derived from it, the loopback guard and
//! the `--src` address range.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, bail, Context, Result};

/// A parsed `ws://` or `http://` URL (no TLS: wsbench talks to loopback nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    /// `host[:port]` exactly as written, for the Host header.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| anyhow!("{s}: missing scheme (ws:// or http://)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "ws" | "http" => 80,
            "wss" | "https" => bail!("{s}: TLS is not supported; point wsbench at the plain port"),
            other => bail!("{s}: unsupported scheme {other}"),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            bail!("{s}: missing host");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("{s}: unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("{s}: bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().with_context(|| format!("{s}: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }

    /// The server API base for a WebSocket URL: same host and port, plain HTTP.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// The path with `key=value` appended to the query.
    pub fn path_with_query(&self, key: &str, value: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}{key}={value}", self.path)
    }

    /// Resolves the host; every address must be loopback unless `allow_remote`.
    pub async fn resolve(&self, allow_remote: bool) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("resolving {}", self.host))?
            .collect();
        if addrs.is_empty() {
            bail!("{} resolves to no address", self.host);
        }
        check_loopback(&self.host, &addrs, allow_remote)?;
        // Prefer IPv4 when a name resolves to both (localhost), as most servers listen on it.
        let mut v: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
        if v.is_empty() {
            v = addrs;
        }
        Ok(v)
    }
}

/// The safety guard: load goes to loopback only, unless the operator says otherwise.
pub fn check_loopback(host: &str, addrs: &[SocketAddr], allow_remote: bool) -> Result<()> {
    if allow_remote {
        return Ok(());
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to load {host} ({}): not a loopback address; pass --allow-remote to target \
             a server you operate",
            a.ip()
        );
    }
    Ok(())
}

/// Parses `--src`: `127.0.0.2-127.0.0.50`, a single address, or a comma-separated list of either.
pub fn parse_src(spec: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--src {part}"))?;
            let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--src {part}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 1 << 20 {
                bail!("--src {part}: bad range");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().with_context(|| format!("--src {part}"))?);
        }
    }
    if out.is_empty() {
        bail!("--src {spec}: no address");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let u = Url::parse("ws://localhost:8080/ws").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 8080, "/ws")
        );
        assert_eq!(u.api_base(), "http://localhost:8080");
        assert_eq!(u.path_with_query("token", "x"), "/ws?token=x");
        let u = Url::parse("ws://127.0.0.1:9/ws?a=1").unwrap();
        assert_eq!(u.path_with_query("token", "x"), "/ws?a=1&token=x");
        let u = Url::parse("ws://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 81, "/"));
        assert!(Url::parse("wss://x/ws").is_err());
        assert!(Url::parse("localhost:8080").is_err());
    }

    #[test]
    fn loopback_guard() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let lo6: SocketAddr = "[::1]:80".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(check_loopback("x", &[lo, lo6], false).is_ok());
        assert!(check_loopback("x", &[lo, far], false).is_err());
        assert!(check_loopback("x", &[far], true).is_ok());
    }

    #[test]
    fn src_ranges() {
        let v = parse_src("127.0.0.2-127.0.0.5,127.0.0.9").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[4], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert!(parse_src("127.0.0.5-127.0.0.2").is_err());
    }
}
