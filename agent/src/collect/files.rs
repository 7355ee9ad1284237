//! User-defined metrics: values another program or the kernel leaves in a file (a thermal
//! zone, a counter an application exports), read at every report. Values that Device
//! Defender would silently drop are refused here, with a log line, and never sent. Reads
//! files only; never runs a command.

use std::{net::IpAddr, path::PathBuf, str::FromStr};

use anyhow::{Result, bail};
use log::warn;

use crate::{
    host::files::{self, Links},
    report::{CustomMetric, Kind, Number, catalog::valid_name},
};

/// A metric file holds one value or one list: well under this.
const METRIC_FILE_MAX: u64 = 256 << 10;

/// A metric the operator defined: its name, its type, and the file it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMetric {
    pub name: String,
    pub kind: Kind,
    pub path: PathBuf,
}

/// `NAME=TYPE:PATH`, as given on the command line.
impl FromStr for FileMetric {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((name, rest)) = s.split_once('=') else {
            bail!(
                "{s:?}: write a metric as NAME=TYPE:PATH, e.g. board_temp=number:/sys/class/thermal/thermal_zone0/temp"
            );
        };
        let Some((kind, path)) = rest.split_once(':') else {
            bail!("{s:?}: write a metric as NAME=TYPE:PATH");
        };
        FileMetric::new(name, kind.parse()?, PathBuf::from(path))
    }
}

impl FileMetric {
    pub fn new(name: &str, kind: Kind, path: PathBuf) -> Result<Self> {
        if let Err(why) = valid_name(name) {
            bail!("custom metric name {name:?} {why}");
        }
        if path.as_os_str().is_empty() {
            bail!("custom metric {name} has no file to read");
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
            path,
        })
    }

    /// This interval's value, or none (logged) when the file cannot be read or holds a
    /// value Device Defender would drop.
    pub fn read(&self) -> Option<CustomMetric> {
        let text = match files::read_text(&self.path, METRIC_FILE_MAX, Links::Follow) {
            Ok((text, _)) => text,
            Err(err) => {
                warn!(
                    "custom metric {}: cannot read {}: {err}; not sent this time",
                    self.name,
                    self.path.display()
                );
                return None;
            }
        };
        match parse(self.kind, &text) {
            Ok(value) => Some(value),
            Err(why) => {
                warn!(
                    "custom metric {}: {} holds {why}; not sent this time",
                    self.name,
                    self.path.display()
                );
                None
            }
        }
    }
}

fn parse(kind: Kind, text: &str) -> Result<CustomMetric, String> {
    let items: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .collect();
    match kind {
        Kind::Number => match items.as_slice() {
            [one] => number(one).map(CustomMetric::Number),
            [] => Err("nothing".into()),
            _ => Err(format!("{} values where one number belongs", items.len())),
        },
        Kind::NumberList => {
            let numbers = items
                .iter()
                .map(|i| match number(i)? {
                    Number::Count(n) => Ok(n),
                    Number::Reading(_) => Err(format!("{i:?}, not a whole number")),
                })
                .collect::<Result<_, String>>()?;
            Ok(CustomMetric::NumberList(numbers))
        }
        Kind::StringList => {
            for item in &items {
                if !item
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '/' | '.'))
                {
                    return Err(format!(
                        "{item:?}, with characters Device Defender drops (keep to letters, \
                         digits and : _ - / .)"
                    ));
                }
            }
            Ok(CustomMetric::StringList(
                items.iter().map(|s| (*s).to_owned()).collect(),
            ))
        }
        Kind::IpList => {
            for item in &items {
                item.parse::<IpAddr>()
                    .map_err(|_| format!("{item:?}, not an IP address"))?;
            }
            Ok(CustomMetric::IpList(
                items.iter().map(|s| (*s).to_owned()).collect(),
            ))
        }
    }
}

/// A number Device Defender keeps: finite, at most 15 significant digits.
fn number(text: &str) -> Result<Number, String> {
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0');
    let significant = if mantissa.contains('.') {
        significant.trim_end_matches('0')
    } else {
        significant
    };
    if significant.len() > 15 {
        return Err(format!("{text:?}, over 15 significant digits"));
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Number::Count(n));
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Number::Reading(f)),
        _ => Err(format!("{text:?}, not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_metric_files() {
        let seeds = [
            "45000\n",
            " -12.5 ",
            "1, 2\n3",
            "a:b/c.d x_y",
            "10.0.0.1 ::1\n",
        ]
        .map(|s| s.as_bytes().to_vec());
        crate::host::fuzz::run("metric-files", &seeds, |bytes| {
            let text = String::from_utf8_lossy(bytes);
            for kind in [
                Kind::Number,
                Kind::NumberList,
                Kind::StringList,
                Kind::IpList,
            ] {
                let _ = parse(kind, &text);
            }
        });
    }

    #[test]
    fn numbers_and_lists_are_read_as_device_defender_keeps_them() {
        assert_eq!(
            parse(Kind::Number, "45000\n"),
            Ok(CustomMetric::Number(Number::Count(45000)))
        );
        assert_eq!(
            parse(Kind::Number, " -12.5 "),
            Ok(CustomMetric::Number(Number::Reading(-12.5)))
        );
        assert_eq!(
            parse(Kind::NumberList, "1, 2\n3"),
            Ok(CustomMetric::NumberList(vec![1, 2, 3]))
        );
        assert_eq!(
            parse(Kind::StringList, "eth0 /usr/bin/x a:b_c-d.e"),
            Ok(CustomMetric::StringList(vec![
                "eth0".into(),
                "/usr/bin/x".into(),
                "a:b_c-d.e".into()
            ]))
        );
        assert_eq!(
            parse(Kind::IpList, "10.0.0.1\n2001:db8::1\n"),
            Ok(CustomMetric::IpList(vec![
                "10.0.0.1".into(),
                "2001:db8::1".into()
            ]))
        );
    }

    #[test]
    fn values_device_defender_would_drop_are_refused() {
        assert!(parse(Kind::Number, "1234567890123456").is_err());
        assert!(parse(Kind::Number, "0.1234567890123456").is_err());
        assert!(parse(Kind::Number, "NaN").is_err());
        assert!(parse(Kind::Number, "inf").is_err());
        assert!(parse(Kind::Number, "").is_err());
        assert!(parse(Kind::Number, "1 2").is_err());
        assert!(parse(Kind::NumberList, "1 2.5").is_err());
        assert!(parse(Kind::StringList, "has space\tok").is_ok());
        assert!(parse(Kind::StringList, "semi;colon").is_err());
        assert!(parse(Kind::IpList, "10.0.0.256").is_err());
        assert_eq!(
            parse(Kind::Number, "100000000000000"),
            Ok(100_000_000_000_000_u64.into()).map(|m: CustomMetric| m)
        );
    }

    #[test]
    fn names_follow_the_device_defender_pattern() {
        assert!(valid_name("board:temp_1-a").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name(&"x".repeat(129)).is_err());
        assert!(valid_name("aws:cpu").is_err());
        assert!(valid_name("with space").is_err());
    }

    #[test]
    fn a_command_line_metric_names_its_type_and_file() {
        let m: FileMetric = "temp=number:/sys/class/thermal/thermal_zone0/temp"
            .parse()
            .unwrap();
        assert_eq!(m.kind, Kind::Number);
        assert_eq!(
            m.path,
            PathBuf::from("/sys/class/thermal/thermal_zone0/temp")
        );
        assert!("temp:number".parse::<FileMetric>().is_err());
        assert!("temp=float:/x".parse::<FileMetric>().is_err());
        assert!("aws:x=number:/x".parse::<FileMetric>().is_err());
    }
}
