//! Criteria: what a behaviour calls normal for its metric (an operator and a value, the
//! reports a duration spans, the datapoints in a row that raise and clear an alarm), read
//! from Device Defender's format and checked against the metric's shape, and whether a
//! datapoint meets them.

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Map, Value};

use super::datapoint::{Datapoint, Shape, canonical};

/// The durations Device Defender accepts for a count, in seconds.
const DURATIONS: [u64; 5] = [300, 600, 900, 1800, 3600];

#[derive(Clone, Debug, PartialEq)]
pub struct Criteria {
    pub operator: Operator,
    pub value: Expected,
    /// Reports added up into one datapoint, for `durationSeconds`.
    pub duration: Option<u64>,
    pub to_alarm: u32,
    pub to_clear: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    LessThan,
    LessThanEquals,
    GreaterThan,
    GreaterThanEquals,
    InCidrSet,
    NotInCidrSet,
    InPortSet,
    NotInPortSet,
    InSet,
    NotInSet,
}

const OPERATORS: [(&str, Operator); 10] = [
    ("less-than", Operator::LessThan),
    ("less-than-equals", Operator::LessThanEquals),
    ("greater-than", Operator::GreaterThan),
    ("greater-than-equals", Operator::GreaterThanEquals),
    ("in-cidr-set", Operator::InCidrSet),
    ("not-in-cidr-set", Operator::NotInCidrSet),
    ("in-port-set", Operator::InPortSet),
    ("not-in-port-set", Operator::NotInPortSet),
    ("in-set", Operator::InSet),
    ("not-in-set", Operator::NotInSet),
];

/// The value a datapoint is compared with.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Count(u64),
    Number(f64),
    Ports(BTreeSet<u16>),
    Cidrs(Vec<Cidr>),
    Numbers(Vec<f64>),
    Strings(BTreeSet<String>),
}

/// An address block: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let base = canonical(address.parse().ok()?);
        // A mapped address's prefix counts the 96 bits of the mapping.
        let mapped = u8::from(address.parse::<IpAddr>().ok()? != base) * 96;
        let width = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok()?.checked_sub(mapped)?,
            None => width,
        };
        (prefix <= width).then_some(Self { base, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v4) => u128::from(v4.to_bits()) << 96,
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let address = canonical(address);
        if address.is_ipv4() != self.base.is_ipv4() {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        bits(address) & mask == bits(self.base) & mask
    }
}

/// The criteria of the behaviour named in `at`, checked against its metric's shape and
/// whether the metric counts.
pub fn parse(
    at: &str,
    metric: &str,
    shape: Shape,
    counts: bool,
    criteria: &Map<String, Value>,
) -> Result<Criteria, String> {
    let Some(operator) = criteria.get("comparisonOperator").and_then(Value::as_str) else {
        return Err(format!(
            "{at}: criteria has no comparisonOperator; give one"
        ));
    };
    let names: Vec<&str> = OPERATORS.iter().map(|(n, _)| *n).collect();
    let Some(&(_, op)) = OPERATORS.iter().find(|(n, _)| *n == operator) else {
        return Err(format!(
            "{at}: comparisonOperator {operator:?} is unknown; use one of {}",
            names.join(", ")
        ));
    };
    let (operators, kind, example): (&[Operator], &str, &str) = match shape {
        Shape::Count => (&NUMERIC, "count", "{\"count\": 50}"),
        Shape::Number => (&NUMERIC, "number", "{\"number\": 50}"),
        Shape::Ports => (&PORT_SETS, "ports", "{\"ports\": [22, 443]}"),
        Shape::Addresses => (&CIDR_SETS, "cidrs", "{\"cidrs\": [\"192.0.2.0/24\"]}"),
        Shape::Numbers => (&SETS, "numbers", "{\"numbers\": [443, 8883]}"),
        Shape::Strings => (&SETS, "strings", "{\"strings\": [\"/usr/bin/app\"]}"),
    };
    if !operators.contains(&op) {
        let allowed: Vec<&str> = OPERATORS
            .iter()
            .filter(|(_, o)| operators.contains(o))
            .map(|(n, _)| *n)
            .collect();
        return Err(format!(
            "{at}: {operator} does not apply to {metric}; use {}",
            allowed.join(", ")
        ));
    }
    let value = match criteria.get("value").and_then(Value::as_object) {
        Some(value) if value.len() == 1 && value.contains_key(kind) => expected(kind, &value[kind])
            .ok_or_else(|| {
                format!(
                    "{at}: value {kind} is not {}; write it like {example}",
                    describe(kind)
                )
            })?,
        _ => {
            return Err(format!(
                "{at}: {metric} with {operator} is compared with a {kind:?} value; write \
                 \"value\": {example}"
            ));
        }
    };
    let duration = match criteria.get("durationSeconds") {
        None => None,
        Some(_) if !matches!(shape, Shape::Count | Shape::Number) => {
            return Err(format!(
                "{at}: durationSeconds adds up numbers, and {metric} is a list; remove it"
            ));
        }
        Some(_) if !counts => {
            return Err(format!(
                "{at}: durationSeconds adds up counts, and {metric} is a reading at report \
                 time; remove it"
            ));
        }
        Some(d) => match d.as_u64().filter(|d| DURATIONS.contains(d)) {
            Some(d) => Some(d),
            None => {
                return Err(format!(
                    "{at}: durationSeconds {d} is not one Device Defender takes; use 300, 600, \
                     900, 1800 or 3600"
                ));
            }
        },
    };
    Ok(Criteria {
        operator: op,
        value,
        duration,
        to_alarm: consecutive(at, criteria, "consecutiveDatapointsToAlarm")?,
        to_clear: consecutive(at, criteria, "consecutiveDatapointsToClear")?,
    })
}

const NUMERIC: [Operator; 4] = [
    Operator::LessThan,
    Operator::LessThanEquals,
    Operator::GreaterThan,
    Operator::GreaterThanEquals,
];
const PORT_SETS: [Operator; 2] = [Operator::InPortSet, Operator::NotInPortSet];
const CIDR_SETS: [Operator; 2] = [Operator::InCidrSet, Operator::NotInCidrSet];
const SETS: [Operator; 2] = [Operator::InSet, Operator::NotInSet];

fn describe(kind: &str) -> &'static str {
    match kind {
        "count" => "a whole number from 0 up",
        "number" => "a number",
        "ports" => "a list of ports (0 to 65535)",
        "cidrs" => "a list of addresses or address blocks",
        "numbers" => "a list of numbers",
        _ => "a list of strings",
    }
}

fn expected(kind: &str, value: &Value) -> Option<Expected> {
    let list = || value.as_array().map(Vec::as_slice);
    Some(match kind {
        "count" => Expected::Count(value.as_u64()?),
        "number" => Expected::Number(value.as_f64()?),
        "ports" => Expected::Ports(
            list()?
                .iter()
                .map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                .collect::<Option<_>>()?,
        ),
        "cidrs" => Expected::Cidrs(
            list()?
                .iter()
                .map(|c| c.as_str().and_then(Cidr::parse))
                .collect::<Option<_>>()?,
        ),
        "numbers" => Expected::Numbers(list()?.iter().map(Value::as_f64).collect::<Option<_>>()?),
        _ => Expected::Strings(
            list()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
        ),
    })
}

/// A consecutive count: 1 to 10, 1 when left out.
fn consecutive(at: &str, criteria: &Map<String, Value>, key: &str) -> Result<u32, String> {
    match criteria.get(key) {
        None => Ok(1),
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=10).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{at}: {key} {n} is out of range; use 1..10")),
    }
}

impl Criteria {
    /// Whether `datapoint` is within the criteria: what the behaviour calls normal.
    pub fn normal(&self, datapoint: &Datapoint) -> bool {
        use Operator::*;
        let compare = |ordering: std::cmp::Ordering| match self.operator {
            LessThan => ordering.is_lt(),
            LessThanEquals => ordering.is_le(),
            GreaterThan => ordering.is_gt(),
            GreaterThanEquals => ordering.is_ge(),
            _ => false,
        };
        match (datapoint, &self.value) {
            (Datapoint::Count(n), Expected::Count(limit)) => compare(n.cmp(limit)),
            (Datapoint::Number(x), Expected::Number(limit)) => {
                x.partial_cmp(limit).is_some_and(compare)
            }
            (Datapoint::Ports(ports), Expected::Ports(set)) => {
                self.set_normal(ports.iter().map(|p| set.contains(p)))
            }
            (Datapoint::Addresses(addresses), Expected::Cidrs(cidrs)) => self.set_normal(
                addresses
                    .iter()
                    .map(|a| cidrs.iter().any(|c| c.contains(*a))),
            ),
            (Datapoint::Numbers(numbers), Expected::Numbers(set)) => {
                self.set_normal(numbers.iter().map(|n| set.contains(n)))
            }
            (Datapoint::Strings(strings), Expected::Strings(set)) => {
                self.set_normal(strings.iter().map(|s| set.contains(s)))
            }
            // Parsing gives each metric the value kind of its shape; a report that changed
            // a metric's type judges nothing.
            _ => true,
        }
    }

    /// Whether a list is normal, given whether each element is inside the set: every one for
    /// the in- operators, none for the not-in ones.
    fn set_normal(&self, mut inside: impl Iterator<Item = bool>) -> bool {
        match self.operator {
            Operator::InCidrSet | Operator::InPortSet | Operator::InSet => inside.all(|i| i),
            _ => !inside.any(|i| i),
        }
    }

    /// Whether a growing value can become a violation for good: an upper bound, or a set
    /// of what is normal.
    pub fn violated_by_growth(&self) -> bool {
        !matches!(
            self.operator,
            Operator::GreaterThan | Operator::GreaterThanEquals
        )
    }

    /// Whether a violating datapoint stays one however it grows: a count over an upper bound
    /// only goes further over, and an element a set operator refuses stays in the list. A
    /// partial datapoint (a window short of reports, a running count) alarms only then.
    pub fn violated_for_good(&self, datapoint: &Datapoint) -> bool {
        self.violated_by_growth() && !self.normal(datapoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_hold_their_addresses_and_no_others() {
        let block = |text| Cidr::parse(text).unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(block("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!block("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(block("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")));
        assert!(!block("10.0.0.0/8").contains(ip("::a00:1")));
        assert!(block("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!block("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(block("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!block("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(block("0.0.0.0/0").contains(ip("198.51.100.1")));
        assert!(block("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
