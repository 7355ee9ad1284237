//! Device Defender's replies: which published reports await one, what the cloud said
//! (accepted, or rejected and why), and which went unanswered (a reply that comes later
//! still counts); counted for tern's own metrics and totalled for the log. Only a message on
//! the reports' own `/accepted` or `/rejected` topic is a reply; anything else the broker
//! sends is ignored. What the broker wrote reaches the log escaped and cut, and replies tern
//! cannot use are logged at a bounded rate, so a broker can neither forge log lines nor
//! flood the log. Never publishes.

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::Ordering,
    time::Duration,
};

use log::{debug, error, info, warn};
use serde_json::Value;
use tokio::time::Instant;

use crate::{output::outbox::Counters, report::Format};

/// The most characters of the broker's text one log line shows.
const PEER_TEXT_MAX: usize = 200;
/// Replies tern cannot use: at most this many logged per window, the rest counted.
const NOISE_LINES: u32 = 5;
const NOISE_WINDOW: Duration = Duration::from_secs(60);
/// Reports counted unanswered whose reply is still counted should it come: the newest this
/// many (a few hours' worth even at a report a minute).
const LATE_KEPT: usize = 256;

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
    /// Reports counted unanswered, oldest first.
    late: VecDeque<u64>,
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

    /// Report `id` was just published (again): its reply is awaited from now.
    pub fn published(&mut self, id: u64) {
        self.late.retain(|&l| l != id);
        self.awaiting.insert(id, Instant::now());
    }

    fn totals(&self) -> String {
        format!(
            "reports accepted {}, rejected {}, unanswered {}",
            self.accepted, self.rejected, self.unanswered
        )
    }

    /// Follows a message on `topic` in `format`: a reply when `topic` is `report_topic`'s
    /// `/accepted` or `/rejected`. Returns the id of the report a reply answers, if it names
    /// one.
    pub fn on_reply(
        &mut self,
        report_topic: &str,
        topic: &str,
        payload: &[u8],
        format: Format,
        counters: &Counters,
    ) -> Option<u64> {
        let verdict = topic
            .strip_prefix(report_topic)
            .and_then(|reply| match reply {
                "/accepted" => Some(true),
                "/rejected" => Some(false),
                _ => None,
            });
        let Some(accepted) = verdict else {
            // Not a reply to tern's reports, whatever it carries: another thing's, another
            // encoding's, or no Device Defender topic at all.
            debug!(
                "a message on {}, not a reply topic of this thing's reports; ignored",
                peer_text(topic)
            );
            return None;
        };
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
        // A reply after the reply timeout still tells what the cloud did with the report;
        // the report stays counted unanswered too, which it was: no reply within the timeout.
        let late = match self.awaiting.remove(&id) {
            Some(_) => "",
            None => match self.late.iter().position(|&l| l == id) {
                Some(at) => {
                    self.late.remove(at);
                    " (after the reply timeout, when it was counted unanswered)"
                }
                None => {
                    debug!("reply on {topic} for report {id}, which is not awaiting one");
                    return Some(id);
                }
            },
        };
        if accepted {
            self.accepted += 1;
            counters.accepted.fetch_add(1, Ordering::SeqCst);
            info!("report {id} accepted{late}; {}", self.totals());
        } else {
            self.rejected += 1;
            counters.rejected.fetch_add(1, Ordering::SeqCst);
            let details = &value["statusDetails"];
            let code = peer_text(details["ErrorCode"].as_str().unwrap_or("no error code"));
            let message = peer_text(details["ErrorMessage"].as_str().unwrap_or(""));
            error!(
                "report {id} rejected{late}: {code}: {message}; {}",
                self.totals()
            );
        }
        Some(id)
    }

    /// Says which replies a stop leaves uncounted.
    pub fn unreplied_at_stop(&self) {
        if self.awaiting.is_empty() || !self.expected() {
            return;
        }
        let mut ids: Vec<u64> = self.awaiting.keys().copied().collect();
        ids.sort_unstable();
        info!(
            "stopping before the reply to report(s) {ids:?}; {}",
            self.totals()
        );
    }

    /// Counts reports that had no reply within `timeout` of being published.
    pub fn expire(&mut self, counters: &Counters, timeout: Duration) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .awaiting
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.awaiting.remove(&id);
            if self.late.len() == LATE_KEPT {
                self.late.pop_front();
            }
            self.late.push_back(id);
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
                    replies.on_reply("t/json", topic, bytes, format, &counters);
                }
            }
        });
    }

    #[test]
    fn only_a_message_on_the_reports_own_reply_topics_is_a_reply() {
        let counters = Counters::default();
        let mut replies = Replies::default();
        replies.awaiting.insert(7, Instant::now());
        let report_topic = "$aws/things/gw/defender/metrics/json";
        let rejection = br#"{"thingName":"gw","reportId":7,"status":"REJECTED"}"#;
        for elsewhere in [
            "$aws/things/gw/defender/metrics/json/rejected/x",
            "$aws/things/gw/defender/metrics/cbor/rejected",
            "$aws/things/gw-2/defender/metrics/json/rejected",
            "$aws/things/gw/defender/metrics/json",
            "gw/json/rejected",
        ] {
            let answered =
                replies.on_reply(report_topic, elsewhere, rejection, Format::Json, &counters);
            assert_eq!(answered, None, "{elsewhere}");
        }
        let acceptance = br#"{"thingName":"gw","reportId":7,"status":"ACCEPTED"}"#;
        let topic = format!("{report_topic}/accepted");
        let answered = replies.on_reply(report_topic, &topic, acceptance, Format::Json, &counters);
        assert_eq!(answered, Some(7));
        assert_eq!(counters.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(counters.rejected.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reply_after_the_timeout_still_counts_once() {
        let counters = Counters::default();
        let mut replies = Replies::default();
        replies.awaiting.insert(7, Instant::now());
        replies.expire(&counters, Duration::ZERO);
        assert_eq!(counters.unanswered.load(Ordering::SeqCst), 1);
        let topic = "t/json/accepted";
        let acceptance = br#"{"reportId":7,"status":"ACCEPTED"}"#;
        for _ in 0..2 {
            let answered = replies.on_reply("t/json", topic, acceptance, Format::Json, &counters);
            assert_eq!(answered, Some(7));
        }
        assert_eq!(counters.accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn replies_tern_cannot_use_are_logged_at_a_bounded_rate() {
        let mut noise = Noise::default();
        let admitted = (0..1000).filter(|_| noise.admit().is_some()).count();
        assert_eq!(admitted, NOISE_LINES as usize);
        assert_eq!(noise.suppressed, 1000 - u64::from(NOISE_LINES));
    }
}
