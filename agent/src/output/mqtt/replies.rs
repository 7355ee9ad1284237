//! Device Defender's replies: which published reports await one, what the cloud said
//! (accepted, or rejected and why), and which went unanswered; counted for tern's own
//! metrics and totalled for the log. Never publishes.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use log::{debug, error, info, warn};
use serde_json::Value;
use tokio::time::Instant;

use crate::{output::outbox::Counters, report::Format};

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
        let Some(value) = value else {
            warn!("a reply on {topic} does not parse; ignored");
            return None;
        };
        let Some(id) = value.get("reportId").and_then(Value::as_u64) else {
            warn!("a reply on {topic} has no reportId; ignored: {value}");
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
            let code = details["ErrorCode"].as_str().unwrap_or("no error code");
            let message = details["ErrorMessage"].as_str().unwrap_or("");
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
