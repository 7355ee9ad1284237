//! Device Defender's replies: which published reports await one, what the cloud said
//! (accepted, or rejected and why), and which went unanswered; counted for tern's own
//! metrics and totalled for the log. What the broker wrote reaches the log escaped and cut,
//! and replies tern cannot use are logged at a bounded rate, so a broker can neither forge
//! log lines nor flood the log. Never publishes.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use log::{debug, error, info, warn};
use serde_json::Value;
use tokio::time::Instant;

use crate::{output::outbox::Counters, report::Format};

/// The most characters of the broker's text one log line shows.
const PEER_TEXT_MAX: usize = 200;
/// Replies tern cannot use: at most this many logged per window, the rest counted.
const NOISE_LINES: u32 = 5;
const NOISE_WINDOW: Duration = Duration::from_secs(60);

/// Text from the broker, fit for one log line: control characters (line breaks, terminal
/// escapes) escaped, and cut at PEER_TEXT_MAX characters.
fn peer_text(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .take(PEER_TEXT_MAX)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(PEER_TEXT_MAX).is_some() {
        shown.push_str("...(cut)");
    }
    shown
}

/// The rate limit of the log lines about replies tern cannot use.
#[derive(Default)]
struct Noise {
    since: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Noise {
    /// Whether to log one more line now; the first line of a new window says how many the
    /// last one left out.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .since
            .is_none_or(|since| now.duration_since(since) >= NOISE_WINDOW)
        {
            self.since = Some(now);
            self.logged = 0;
        }
        if self.logged < NOISE_LINES {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Reply bookkeeping and totals since start, for the log.
#[derive(Default)]
pub struct Replies {
    /// Report id -> when it was (last) published.
    pub awaiting: HashMap<u64, Instant>,
    accepted: u64,
    rejected: u64,
    unanswered: u64,
    /// The broker refused the subscription to the replies.
    pub refused: bool,
    noise: Noise,
}

impl Replies {
    /// Whether a reply can be expected: not when the broker refused the subscription, nor
    /// when reports went unanswered and none was ever answered (a broker with no Device
    /// Defender or responder behind it).
    pub fn expected(&self) -> bool {
        !self.refused && (self.accepted + self.rejected > 0 || self.unanswered == 0)
    }

    fn totals(&self) -> String {
        format!(
            "reports accepted {}, rejected {}, unanswered {}",
            self.accepted, self.rejected, self.unanswered
        )
    }

    /// Follows a reply in `format`; returns the id of the report it answers, if it names one.
    pub fn on_reply(
        &mut self,
        topic: &str,
        payload: &[u8],
        format: Format,
        counters: &Counters,
    ) -> Option<u64> {
        let accepted = topic.ends_with("/accepted");
        let value: Option<Value> = match format {
            Format::Json => serde_json::from_slice(payload).ok(),
            Format::Cbor => ciborium::from_reader(payload).ok(),
        };
        let topic = peer_text(topic);
        let Some(value) = value else {
            if let Some(left_out) = self.noise.admit() {
                warn!(
                    "a reply on {topic} does not parse; ignored{}",
                    more(left_out)
                );
            }
            return None;
        };
        let Some(id) = value.get("reportId").and_then(Value::as_u64) else {
            if let Some(left_out) = self.noise.admit() {
                warn!(
                    "a reply on {topic} has no reportId; ignored: {}{}",
                    peer_text(&value.to_string()),
                    more(left_out)
                );
            }
            return None;
        };
        if self.awaiting.remove(&id).is_none() {
            debug!("reply on {topic} for report {id}, which is not awaiting one");
            return Some(id);
        }
        if accepted {
            self.accepted += 1;
            counters.accepted.fetch_add(1, Ordering::SeqCst);
            info!("report {id} accepted; {}", self.totals());
        } else {
            self.rejected += 1;
            counters.rejected.fetch_add(1, Ordering::SeqCst);
            let details = &value["statusDetails"];
            let code = peer_text(details["ErrorCode"].as_str().unwrap_or("no error code"));
            let message = peer_text(details["ErrorMessage"].as_str().unwrap_or(""));
            error!("report {id} rejected: {code}: {message}; {}", self.totals());
        }
        Some(id)
    }

    /// Counts reports that had no reply within `timeout` of being published.
    pub fn expire(&mut self, counters: &Counters, timeout: Duration) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .awaiting
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.awaiting.remove(&id);
            self.unanswered += 1;
            counters.unanswered.fetch_add(1, Ordering::SeqCst);
            warn!(
                "no reply to report {id} within {} s; {}",
                timeout.as_secs(),
                self.totals()
            );
        }
    }
}

/// What a log line adds about the lines the rate limit left out before it.
fn more(left_out: u64) -> String {
    match left_out {
        0 => String::new(),
        n => format!(" ({n} more such replies in the last minute were not logged)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_text_cannot_break_a_line_or_drive_a_terminal_and_is_cut() {
        assert_eq!(
            peer_text("bad\n[INFO ] report 9 accepted\u{1b}[2J"),
            "bad\\n[INFO ] report 9 accepted\\u{1b}[2J"
        );
        let long = "x".repeat(10_000);
        let shown = peer_text(&long);
        assert!(shown.len() < 300 && shown.ends_with("(cut)"), "{shown}");
    }

    #[test]
    fn fuzz_broker_replies() {
        let accepted = serde_json::json!({"thingName": "t", "reportId": 1, "status": "ACCEPTED",
            "timestamp": 1});
        let rejected = serde_json::json!({"thingName": "t", "reportId": 2, "status": "REJECTED",
            "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed"},
            "timestamp": 1});
        let mut seeds: Vec<Vec<u8>> = [&accepted, &rejected]
            .map(|v| serde_json::to_vec(v).unwrap())
            .to_vec();
        for value in [&accepted, &rejected] {
            let mut cbor = Vec::new();
            ciborium::into_writer(value, &mut cbor).unwrap();
            seeds.push(cbor);
        }
        let counters = Counters::default();
        crate::host::fuzz::run("replies", &seeds, |bytes| {
            let mut replies = Replies::default();
            for id in 1..=3 {
                replies.awaiting.insert(id, Instant::now());
            }
            for format in [Format::Json, Format::Cbor] {
                for topic in ["t/json/accepted", "t/json/rejected"] {
                    replies.on_reply(topic, bytes, format, &counters);
                }
            }
        });
    }

    #[test]
    fn replies_tern_cannot_use_are_logged_at_a_bounded_rate() {
        let mut noise = Noise::default();
        let admitted = (0..1000).filter(|_| noise.admit().is_some()).count();
        assert_eq!(admitted, NOISE_LINES as usize);
        assert_eq!(noise.suppressed, 1000 - u64::from(NOISE_LINES));
    }
}
