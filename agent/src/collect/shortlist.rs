//! The connections a report can list. A report sorts its connections and cuts the list to
//! its byte budget, so a collector keeps only the first connections in that order, as many
//! as the budget could ever hold, and counts the rest: what it keeps is bounded by the
//! budget, however many sockets exist.

use crate::report::{Connection, Connections};

pub struct Shortlist {
    most: usize,
    /// The lowest connections added, with at most as many more not yet sorted out.
    kept: Vec<Connection>,
    total: u64,
}

impl Shortlist {
    /// A list that keeps at most `most` connections.
    pub fn new(most: usize) -> Self {
        Self {
            most,
            kept: Vec::new(),
            total: 0,
        }
    }

    pub fn add(&mut self, connection: Connection) {
        self.total += 1;
        self.kept.push(connection);
        // Sorting out in batches of `most` costs a linear selection each, far less than
        // keeping the lowest in order at every addition.
        if self.kept.len() >= 2 * self.most.max(1) {
            self.keep_lowest();
        }
    }

    /// The connections kept, sorted, with the count of every connection added.
    pub fn connections(mut self) -> Connections {
        self.keep_lowest();
        self.kept.sort_unstable();
        Connections {
            total: self.total,
            connections: self.kept,
        }
    }

    fn keep_lowest(&mut self) {
        if self.kept.len() > self.most {
            self.kept.select_nth_unstable(self.most);
            self.kept.truncate(self.most);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(remote: &str, local_port: u16) -> Connection {
        Connection {
            remote_addr: remote.to_owned(),
            local_port,
            local_interface: None,
        }
    }

    #[test]
    fn keeps_the_first_connections_in_report_order_and_counts_all() {
        let mut list = Shortlist::new(3);
        for (remote, port) in [
            ("10.0.0.9:80", 1),
            ("10.0.0.1:80", 2),
            ("192.0.2.1:22", 3),
            ("10.0.0.1:80", 1),
            ("10.0.0.5:443", 4),
            ("[2001:db8::1]:22", 5),
        ] {
            list.add(connection(remote, port));
        }
        let listed = list.connections();
        assert_eq!(listed.total, 6);
        assert_eq!(
            listed.connections,
            [
                connection("10.0.0.1:80", 1),
                connection("10.0.0.1:80", 2),
                connection("10.0.0.5:443", 4),
            ]
        );
    }

    #[test]
    fn fewer_than_it_keeps_are_all_kept_sorted() {
        let mut list = Shortlist::new(10);
        list.add(connection("10.0.0.2:1", 1));
        list.add(connection("10.0.0.1:1", 1));
        let listed = list.connections();
        assert_eq!(listed.total, 2);
        assert_eq!(
            listed.connections,
            [connection("10.0.0.1:1", 1), connection("10.0.0.2:1", 1)]
        );
    }

    #[test]
    fn many_batches_keep_what_a_whole_sort_keeps() {
        let all: Vec<Connection> = (0..1000u32)
            .map(|i| connection(&format!("10.0.{}.{}:443", i * 7919 % 251, i % 13), i as u16))
            .collect();
        let mut list = Shortlist::new(10);
        all.iter().cloned().for_each(|c| list.add(c));
        let mut sorted = all;
        sorted.sort_unstable();
        let listed = list.connections();
        assert_eq!(listed.total, 1000);
        assert_eq!(listed.connections, sorted[..10]);
    }
}
