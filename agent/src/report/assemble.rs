//! Assembly: one report from an interval's collected values, with tern's own custom metrics
//! as the selection allows and the operator's after them.

use super::{
    CustomMetric, Metrics, NetworkStats, PortList, Report, TcpConnections,
    catalog::{Metric, Selection},
};

/// What collection found over one interval.
pub struct Interval {
    pub network_stats: NetworkStats,
    pub listening_tcp_ports: PortList,
    pub listening_udp_ports: PortList,
    pub tcp_connections: TcpConnections,
    /// tern's own custom metrics.
    pub own: Vec<(Metric, CustomMetric)>,
    /// The operator's metrics, by name.
    pub user: Vec<(String, CustomMetric)>,
}

impl Interval {
    pub fn into_report(self, id: u64, selection: &Selection) -> Report {
        let mut report = Report::new(
            id,
            Metrics {
                listening_tcp_ports: Some(self.listening_tcp_ports),
                listening_udp_ports: Some(self.listening_udp_ports),
                network_stats: Some(self.network_stats),
                tcp_connections: Some(self.tcp_connections),
            },
        );
        for (metric, value) in self.own {
            debug_assert_eq!(value.kind(), metric.kind, "{}", metric.name);
            if selection.sends(&metric) {
                report.set_custom(metric.name, value);
            }
        }
        for (name, value) in self.user {
            report.custom_metrics.insert(name, [value]);
        }
        report
    }
}
