//! The broker a run reports to: its endpoint's host and port, whether it is AWS IoT
//! Core (which sets the interval floor, the keep-alive window and the ALPN on port 443), the
//! thing name, the MQTT tunables and the TLS material, each checked.

use std::{ops::RangeInclusive, path::PathBuf, sync::Arc};

use log::warn;
use rustls::RootCertStore;

use super::{
    Broker, Problem, check_range,
    endpoint::split_endpoint,
    file::TernSection,
    problem,
    tls::{add_system_roots, client_config, load_cert, load_key, load_roots},
    topic,
};
use crate::report::Format;

/// Device Defender refuses reports more often than this from one thing.
pub const AWS_MIN_INTERVAL: u64 = 300;
const DEFAULT_PORT: u16 = 8883;
const DEFAULT_SPOOL_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_KEEP_ALIVE: u64 = 60;
const DEFAULT_RECONNECT_MAX: u64 = 120;
const DEFAULT_REPLY_TIMEOUT: u64 = 60;
/// AWS IoT Core's largest MQTT packet is 128 KB; the same limit serves other brokers.
const DEFAULT_PACKET_LIMIT: u64 = 128 * 1024;
const SPOOL_BYTES: RangeInclusive<u64> = 4096..=1 << 34;
const KEEP_ALIVE: RangeInclusive<u64> = 1..=1200;
/// The keep-alive AWS IoT Core accepts, in seconds.
const AWS_KEEP_ALIVE: RangeInclusive<u64> = 30..=1200;
const RECONNECT_MAX: RangeInclusive<u64> = 1..=3600;
const REPLY_TIMEOUT: RangeInclusive<u64> = 1..=86_400;
const PACKET_LIMIT: RangeInclusive<u64> = 1024..=256 * 1024 * 1024;
/// ALPN protocol AWS IoT Core needs for MQTT with a client certificate on port 443.
const AWS_ALPN: &str = "x-amzn-mqtt-ca";
const MAX_THING_NAME: usize = 128;
/// AWS IoT Core's longest client id.
const MAX_CLIENT_ID: usize = 128;
/// The longest protocol name TLS's ALPN extension carries.
const MAX_ALPN: usize = 255;
/// What a PUBLISH packet takes besides its topic and payload: the fixed header (1), the
/// remaining length (up to 4), the topic's length (2) and the packet id (2), as the
/// publisher leaves room for them.
const PUBLISH_OVERHEAD: usize = 9;

pub struct BrokerInputs<'a> {
    pub source: &'a str,
    pub endpoint: &'a str,
    pub thing_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub root_ca: Option<PathBuf>,
    pub interval: u64,
    pub format: Format,
    /// The bytes the widest report takes with every list cut to nothing, when known.
    pub report_floor: Option<usize>,
    /// The violations topic given, and the setting that gave it.
    pub violations_topic: Option<(&'static str, String)>,
    pub tern: &'a TernSection,
}

pub fn broker(inputs: BrokerInputs<'_>, problems: &mut Vec<Problem>) -> Option<Broker> {
    let BrokerInputs {
        source,
        endpoint,
        tern,
        ..
    } = inputs;
    let (host, port) = match split_endpoint(endpoint) {
        Ok((host, port)) => (host, port.or(tern.port).unwrap_or(DEFAULT_PORT)),
        Err(why) => {
            problem(
                problems,
                format!(
                    "{source}: endpoint {endpoint:?} {why}; write a host name, an IP address \
                     or either with :port (an IPv6 address with a port as [address]:port)"
                ),
            );
            (String::new(), DEFAULT_PORT)
        }
    };
    if tern.port == Some(0) {
        problem(
            problems,
            format!("{source}: tern.port 0 is no port; use 1..65535, or leave it out for 8883"),
        );
    }
    let aws = tern.aws.unwrap_or_else(|| is_aws_host(&host));
    if aws && inputs.interval < AWS_MIN_INTERVAL {
        problem(
            problems,
            format!(
                "{source}: interval {} s is under {AWS_MIN_INTERVAL} s, which AWS IoT Device \
                 Defender throttles; set device-defender.interval (or --interval) to at least \
                 {AWS_MIN_INTERVAL}",
                inputs.interval
            ),
        );
    }
    let thing_name = match inputs.thing_name {
        Some(name) => {
            if let Some(why) = thing_name_problem(&name) {
                problem(
                    problems,
                    format!("{source}: thing-name {name:?} {why}; use the thing's registered name"),
                );
            } else if !is_aws_thing_name(&name) {
                warn!(
                    "{source}: thing-name {name:?} has characters AWS IoT does not allow in a \
                     thing name (letters, digits, ':', '_' and '-' only), so AWS IoT Core \
                     would not know it; use the thing's registered name"
                );
            }
            name
        }
        None => {
            problem(
                problems,
                format!("{source}: thing-name is missing; set it to the thing's name"),
            );
            String::new()
        }
    };
    let mut require = |key: &str, value: Option<PathBuf>, what: &str| {
        if value.is_none() {
            problem(
                problems,
                format!("{source}: {key} is missing; set it to the path of {what}"),
            );
        }
        value
    };
    let cert = require("cert", inputs.cert, "the device certificate (PEM)");
    let key = require("key", inputs.key, "the device private key (PEM)");
    let system_roots = tern.system_roots.unwrap_or(false);
    let root_ca = match inputs.root_ca {
        None if system_roots => None,
        root_ca => require("root-ca", root_ca, "the broker's CA certificate (PEM)"),
    };
    let chain = cert.as_deref().and_then(|p| load_cert(p, problems));
    let private = key.as_deref().and_then(|p| load_key(p, problems));
    let mut roots = match &root_ca {
        Some(path) => load_roots(path, problems),
        None => Some(RootCertStore::empty()),
    };
    if system_roots && let Some(roots) = &mut roots {
        add_system_roots(roots, source, problems);
    }
    let spool_bytes = tern.spool_bytes.unwrap_or(DEFAULT_SPOOL_BYTES);
    let keep_alive = tern.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE);
    let reconnect_max = tern.reconnect_max.unwrap_or(DEFAULT_RECONNECT_MAX);
    let reply_timeout = tern.reply_timeout.unwrap_or(DEFAULT_REPLY_TIMEOUT);
    let packet_limit = tern.packet_limit.unwrap_or(DEFAULT_PACKET_LIMIT);
    for (key, value, range) in [
        ("tern.spool-bytes", spool_bytes, SPOOL_BYTES),
        ("tern.keep-alive", keep_alive, KEEP_ALIVE),
        ("tern.reconnect-max", reconnect_max, RECONNECT_MAX),
        ("tern.reply-timeout", reply_timeout, REPLY_TIMEOUT),
        ("tern.packet-limit", packet_limit, PACKET_LIMIT),
    ] {
        check_range(problems, source, key, value, &range);
    }
    if let Some(floor) = inputs.report_floor {
        let overhead = PUBLISH_OVERHEAD + topic(&thing_name, inputs.format).len();
        let least = floor + overhead;
        if packet_limit < least as u64 {
            problem(
                problems,
                format!(
                    "{source}: tern.packet-limit {packet_limit} is under {least} bytes: a report \
                     of this configuration can take {floor} bytes with every list cut to \
                     nothing, and its topic (with thing-name {thing_name:?}) and MQTT's framing \
                     {overhead} more, so reports would be lost; set tern.packet-limit to at \
                     least {least}, or shorten thing-name, or send fewer custom metrics \
                     (tern.custom-metrics, --custom-metrics)"
                ),
            );
        }
    }
    if aws && !AWS_KEEP_ALIVE.contains(&keep_alive) {
        problem(
            problems,
            format!(
                "{source}: tern.keep-alive {keep_alive} s is outside AWS IoT Core's {}..{}",
                AWS_KEEP_ALIVE.start(),
                AWS_KEEP_ALIVE.end()
            ),
        );
    }
    // One left out is the thing name, whose own rules are stricter.
    if let Some(why) = tern.client_id.as_deref().and_then(client_id_problem) {
        problem(
            problems,
            format!(
                "{source}: tern.client-id {why}; leave it out to use the thing name, or give \
                 1 to {MAX_CLIENT_ID} printable bytes"
            ),
        );
    }
    let alpn = alpn(tern.alpn.as_deref(), port);
    if let Some(protocol) = &alpn
        && (protocol.len() > MAX_ALPN || protocol.bytes().any(|b| !b.is_ascii_graphic()))
    {
        problem(
            problems,
            format!(
                "{source}: tern.alpn must be at most {MAX_ALPN} printable ASCII bytes (TLS \
                 carries no more); \"\" offers none"
            ),
        );
    }
    let violations_topic = match inputs.violations_topic {
        Some((setting, topic)) => {
            topic::check(source, setting, &topic, aws, problems);
            topic
        }
        None => topic::default(&thing_name),
    };
    let (chain, private, roots) = (chain?, private?, roots?);
    let tls = client_config(chain, private, roots, alpn, cert.as_deref()?, problems)?;
    Some(Broker {
        host,
        port,
        aws,
        client_id: tern.client_id.clone().unwrap_or_else(|| thing_name.clone()),
        thing_name,
        keep_alive,
        reconnect_max,
        reply_timeout,
        packet_limit: usize::try_from(packet_limit).unwrap_or(usize::MAX),
        spool_bytes,
        violations_topic,
        tls: Arc::new(tls),
    })
}

/// The ALPN protocol to offer: the configured one (`""` for none), else on port 443 the one
/// AWS IoT Core needs there for MQTT with a client certificate.
fn alpn(configured: Option<&str>, port: u16) -> Option<String> {
    match configured {
        Some("") => None,
        Some(alpn) => Some(alpn.to_owned()),
        None if port == 443 => Some(AWS_ALPN.to_owned()),
        None => None,
    }
}

/// The topic reports are published to, as the publisher names it.
fn topic(thing_name: &str, format: Format) -> String {
    let format = match format {
        Format::Json => "json",
        Format::Cbor => "cbor",
    };
    format!("$aws/things/{thing_name}/defender/metrics/{format}")
}

/// An AWS IoT Core endpoint is a host under `amazonaws.com` (`tern.aws` overrides this,
/// e.g. for a custom domain name that points at AWS IoT Core).
fn is_aws_host(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(".amazonaws.com")
}

fn thing_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > MAX_THING_NAME {
        Some(format!("is longer than {MAX_THING_NAME} bytes"))
    } else if name.chars().any(char::is_control) {
        Some("contains control characters".to_owned())
    } else if name.contains(['/', '#', '+']) {
        Some("contains an MQTT topic character (/ # +)".to_owned())
    } else {
        None
    }
}

/// AWS IoT's rule for thing names: 1 to 128 of `[a-zA-Z0-9:_-]`.
fn is_aws_thing_name(name: &str) -> bool {
    (1..=MAX_THING_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
}

/// Why a broker would refuse or mangle `id` as an MQTT client id, if it would.
fn client_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("is empty".to_owned())
    } else if id.len() > MAX_CLIENT_ID {
        Some(format!("is longer than {MAX_CLIENT_ID} bytes"))
    } else if id.chars().any(char::is_control) {
        Some("contains control characters".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_443_offers_the_aws_alpn_unless_configured_otherwise() {
        assert_eq!(alpn(None, 443).as_deref(), Some(AWS_ALPN));
        assert_eq!(alpn(None, 8883), None);
        assert_eq!(alpn(Some(""), 443), None);
        assert_eq!(alpn(Some("mqtt"), 8883).as_deref(), Some("mqtt"));
    }

    #[test]
    fn aws_endpoints_are_hosts_under_amazonaws_com() {
        assert!(is_aws_host("abc-ats.iot.eu-west-1.amazonaws.com"));
        assert!(is_aws_host("ABC-ats.iot.eu-west-1.AmazonAWS.com"));
        assert!(!is_aws_host("broker.example.com"));
        assert!(!is_aws_host("amazonaws.com.example.org"));
    }

    #[test]
    fn client_ids_are_what_aws_iot_core_takes() {
        assert_eq!(client_id_problem("gw-1/a"), None);
        assert_eq!(client_id_problem(&"x".repeat(128)), None);
        assert!(client_id_problem("").is_some());
        assert!(client_id_problem(&"x".repeat(129)).is_some());
        assert!(client_id_problem("a\u{1b}[2J").is_some());
    }

    #[test]
    fn thing_names_outside_aws_rules_are_told() {
        assert!(is_aws_thing_name("gw:7_a-B"));
        assert!(!is_aws_thing_name("gw 7"));
        assert!(!is_aws_thing_name("gw.7"));
        assert!(!is_aws_thing_name("g\u{e9}"));
    }

    #[test]
    fn thing_names_follow_the_document_rules() {
        assert_eq!(thing_name_problem("gateway-7"), None);
        assert_eq!(thing_name_problem(&"x".repeat(128)), None);
        assert!(thing_name_problem(&"x".repeat(129)).is_some());
        assert!(thing_name_problem("bad\nname").is_some());
        assert!(thing_name_problem("").is_some());
        assert!(thing_name_problem("a/b").is_some());
    }
}
