//! An endpoint as written: `host`, `host:port`, an IP address or `[v6]:port`, split into its
//! host and port, or refused with the reason when a connection to it could not be made as
//! written (spaces, a scheme, a path, a bad port, a host name DNS cannot carry).

use std::net::Ipv6Addr;

/// The longest host name DNS carries, and its longest label.
const MAX_HOST: usize = 253;
const MAX_LABEL: usize = 63;

/// `host`, `host:port`, an IPv6 address, or `[v6]:port`.
pub fn split_endpoint(endpoint: &str) -> std::result::Result<(String, Option<u16>), &'static str> {
    if endpoint.is_empty() {
        return Err("is empty");
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err("has spaces in it");
    }
    if endpoint.contains("://") {
        return Err("has a scheme");
    }
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed [")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err("holds no IPv6 address between [ and ]");
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("has more after ]")?),
            ),
        }
    } else if endpoint.parse::<Ipv6Addr>().is_ok() {
        (endpoint, None)
    } else {
        match endpoint.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (endpoint, None),
        }
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err("has a bad port (use 1..65535)"),
        })
        .transpose()?;
    if host.is_empty() {
        return Err("has no host");
    }
    if !host.contains(':') {
        host_name_problem(host)?;
    }
    Ok((host.to_owned(), port))
}

/// Why `host` is neither a host name DNS carries nor an IPv4 address, if it is not.
fn host_name_problem(host: &str) -> std::result::Result<(), &'static str> {
    if host.len() > MAX_HOST {
        return Err("has a host name longer than 253 bytes");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err("has an empty part or one over 63 bytes in its host name");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(
                "has a character no host name holds (only letters, digits, '-', '_' and '.')",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            split_endpoint("example.com"),
            Ok(("example.com".into(), None))
        );
        assert_eq!(
            split_endpoint("example.com:443"),
            Ok(("example.com".into(), Some(443)))
        );
        assert_eq!(split_endpoint("[::1]:8883"), Ok(("::1".into(), Some(8883))));
        assert_eq!(split_endpoint("::1"), Ok(("::1".into(), None)));
        assert!(split_endpoint("example.com:http").is_err());
        assert!(split_endpoint("mqtts://example.com").is_err());
        assert!(split_endpoint("").is_err());
        assert!(split_endpoint(":8883").is_err());
        assert_eq!(split_endpoint("[::1]"), Ok(("::1".into(), None)));
        assert_eq!(
            split_endpoint("10.0.0.1:1883"),
            Ok(("10.0.0.1".into(), Some(1883)))
        );
        for bad in [
            " example.com",
            "example.com ",
            "my broker",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+8883",
            "example.com:88:83",
            "[::1]x",
            "[::1]:",
            "[example.com]:8883",
            "example.com/path",
            "user@example.com",
            "a..b",
            &format!("{}.com", "x".repeat(64)),
        ] {
            assert!(split_endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
