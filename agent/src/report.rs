//! The report model: a Device Defender metrics report, with the document's field names.
//! Builds and serialises reports; knows nothing of where the numbers come from or go.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub header: Header,
    pub metrics: Metrics,
}

#[derive(Debug, Serialize)]
pub struct Header {
    pub report_id: u64,
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub network_stats: NetworkStats,
}

/// Traffic since the previous report, in wire segments and wire bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl NetworkStats {
    /// Adds growth given as [bytes_in, packets_in, bytes_out, packets_out].
    pub fn add(&mut self, growth: [u64; 4]) {
        self.bytes_in = self.bytes_in.saturating_add(growth[0]);
        self.packets_in = self.packets_in.saturating_add(growth[1]);
        self.bytes_out = self.bytes_out.saturating_add(growth[2]);
        self.packets_out = self.packets_out.saturating_add(growth[3]);
    }
}

impl Report {
    pub fn new(report_id: u64, network_stats: NetworkStats) -> Self {
        Self {
            header: Header {
                report_id,
                version: "1.0",
            },
            metrics: Metrics { network_stats },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }
}

/// Report ids: epoch milliseconds, but always above the previous id, so a clock stepping
/// back never makes an id repeat or go down.
#[derive(Debug, Default)]
pub struct ReportIds {
    last: u64,
}

impl ReportIds {
    pub fn next(&mut self) -> u64 {
        self.next_at(SystemTime::now())
    }

    fn next_at(&mut self, now: SystemTime) -> u64 {
        let wall = now
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn serialises_with_the_document_field_names() {
        let stats = NetworkStats {
            bytes_in: 1_000,
            bytes_out: 2_000,
            packets_in: 3,
            packets_out: 4,
        };
        let report: Value = serde_json::from_str(&Report::new(42, stats).to_json()).unwrap();
        assert_eq!(
            report,
            json!({
                "header": {"report_id": 42, "version": "1.0"},
                "metrics": {"network_stats": {
                    "bytes_in": 1000, "bytes_out": 2000, "packets_in": 3, "packets_out": 4
                }}
            })
        );
    }

    #[test]
    fn counters_beyond_32_bits_stay_exact() {
        let stats = NetworkStats {
            bytes_in: u64::from(u32::MAX) * 3,
            ..Default::default()
        };
        let report: Value = serde_json::from_str(&Report::new(1, stats).to_json()).unwrap();
        assert_eq!(
            report["metrics"]["network_stats"]["bytes_in"].as_u64(),
            Some(u64::from(u32::MAX) * 3)
        );
    }

    #[test]
    fn report_ids_increase_even_when_the_clock_steps_back() {
        let mut ids = ReportIds::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = ids.next_at(t);
        assert_eq!(first, 1_800_000_000_000);
        let second = ids.next_at(t - Duration::from_secs(3600));
        assert_eq!(second, first + 1);
        assert!(ids.next_at(t + Duration::from_secs(1)) > second);
    }

    #[test]
    fn growth_saturates_instead_of_wrapping() {
        let mut stats = NetworkStats {
            bytes_in: u64::MAX - 1,
            ..Default::default()
        };
        stats.add([5, 1, 2, 3]);
        assert_eq!(stats.bytes_in, u64::MAX);
        assert_eq!(
            (stats.packets_in, stats.bytes_out, stats.packets_out),
            (1, 2, 3)
        );
    }
}
