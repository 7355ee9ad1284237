//! The screen: draws what `seen` holds, the behaviours' alarms and the log's newest lines on
//! one full terminal. Counts are exact integers; rates of bytes are short (`1.2k`, `3.4M`), one
//! token each, so the screen reads as well to a script as to a person.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
};

use super::{
    alarms::Alarm,
    seen::{Interface, MINUTE, Order, Seen, clean},
};
use crate::report::catalog;

/// The smallest terminal the view is drawn in.
pub const SMALLEST: (u16, u16) = (80, 24);

/// Everything one drawing shows.
pub struct View<'a> {
    pub seen: &'a Seen,
    pub order: Order,
    pub paused: bool,
    pub alarms: &'a [Alarm],
    /// The seconds between the reports the behaviours are judged on.
    pub interval: u64,
    pub log: &'a [String],
}

pub fn draw(frame: &mut Frame, view: &View) {
    let seen = view.seen;
    let traffic_rows = u16::try_from(seen.interfaces.len() * 2).unwrap_or(u16::MAX);
    // Many behaviours leave the middle a quarter of the screen or more.
    let alarm_rows = u16::try_from(view.alarms.len().max(1))
        .unwrap_or(u16::MAX)
        .min((frame.area().height / 4).saturating_sub(2).max(1));
    let [title, sources, traffic, middle, alarms, log, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Max(traffic_rows.saturating_add(3)),
        Constraint::Min(6),
        Constraint::Max(alarm_rows.saturating_add(2)),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(title_line(view), title);
    frame.render_widget(
        Paragraph::new(format!("sources: {}", seen.sources.join("  "))).wrap(Wrap { trim: true }),
        sources,
    );
    draw_traffic(frame, traffic, view);
    let [listening, connections, signals] = Layout::horizontal([
        Constraint::Percentage(26),
        Constraint::Percentage(32),
        Constraint::Percentage(42),
    ])
    .areas(middle);
    draw_listening(frame, listening, seen);
    draw_connections(frame, connections, view);
    draw_signals(frame, signals, seen);
    draw_alarms(frame, alarms, view);
    let lines: Vec<Line> = view.log.iter().map(|l| Line::raw(clean(l))).collect();
    frame.render_widget(Paragraph::new(lines).dark_gray(), log);
    frame.render_widget(
        Line::from(vec![
            " q ".reversed(),
            " quit  ".into(),
            " p ".reversed(),
            if view.paused { " resume  " } else { " pause  " }.into(),
            " s ".reversed(),
            format!(" sort: {}", view.order.label()).into(),
        ]),
        keys,
    );
}

fn title_line(view: &View) -> Line<'static> {
    let mut spans = vec![
        Span::styled(" tern watch ", Style::new().bold().reversed()),
        Span::raw(format!(
            "  {} s seen  ·  behaviours judged every {} s",
            view.seen.seconds, view.interval
        )),
    ];
    if view.paused {
        spans.push(Span::styled("  PAUSED", Style::new().bold().yellow()));
    }
    Line::from(spans)
}

fn draw_traffic(frame: &mut Frame, area: Rect, view: &View) {
    const WIDTHS: [u16; 6] = [12, 3, 8, 7, 12, 14];
    let fixed: u16 = WIDTHS.iter().sum::<u16>() + 6;
    let spark = usize::from(area.width.saturating_sub(fixed + 2)).min(MINUTE);
    let mut rows = Vec::new();
    for interface in view.seen.interfaces(view.order) {
        rows.push(direction(interface, true, spark));
        rows.push(direction(interface, false, spark));
    }
    let widths = WIDTHS
        .iter()
        .map(|&w| Constraint::Length(w))
        .chain([Constraint::Fill(1)]);
    let header = Row::new([
        "interface",
        "",
        "pkt/s",
        "B/s",
        "packets",
        "bytes",
        "last minute (B/s)",
    ])
    .bold();
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" traffic ")),
        area,
    );
}

/// One direction of an interface: the last second, the total since the start, the minute.
fn direction(interface: &Interface, inbound: bool, spark: usize) -> Row<'static> {
    let (last, total, minute) = match inbound {
        true => (
            (interface.last.packets_in, interface.last.bytes_in),
            (interface.total.packets_in, interface.total.bytes_in),
            &interface.minute_in,
        ),
        false => (
            (interface.last.packets_out, interface.last.bytes_out),
            (interface.total.packets_out, interface.total.bytes_out),
            &interface.minute_out,
        ),
    };
    let name = if inbound { interface.name.as_str() } else { "" };
    Row::new([
        Cell::from(name.to_owned()),
        Cell::from(if inbound { "in" } else { "out" }),
        Cell::from(last.0.to_string()),
        Cell::from(short(last.1)),
        Cell::from(total.0.to_string()),
        Cell::from(total.1.to_string()),
        Cell::from(sparkline(minute.iter().copied(), spark)).cyan(),
    ])
}

fn draw_listening(frame: &mut Frame, area: Rect, seen: &Seen) {
    let rows = seen.listeners.iter().map(|l| {
        let new = seen.is_new(l);
        let row = Row::new([
            Cell::from(l.protocol),
            Cell::from(l.port.to_string()),
            Cell::from(l.interface.as_deref().map_or_else(|| "*".to_owned(), clean)),
            Cell::from(if new { "new" } else { "" }),
        ]);
        if new { row.green().bold() } else { row }
    });
    let widths = [
        Constraint::Length(3),
        Constraint::Length(5),
        Constraint::Fill(1),
        Constraint::Length(3),
    ];
    let title = format!(" listening ({}) ", seen.listeners.len());
    frame.render_widget(
        Table::new(rows, widths).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_connections(frame: &mut Frame, area: Rect, view: &View) {
    let rows = view
        .seen
        .remotes(view.order)
        .into_iter()
        .map(|r| Row::new([r.address.to_string(), r.connections.to_string()]));
    let widths = [Constraint::Fill(1), Constraint::Length(6)];
    let title = format!(" established {} · by remote ", view.seen.established);
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(["address", "conns"]).bold())
            .block(Block::bordered().title(title)),
        area,
    );
}

fn draw_signals(frame: &mut Frame, area: Rect, seen: &Seen) {
    let rows = seen.signals.iter().map(|s| {
        let row = Row::new([
            label(s.name).to_owned(),
            format!("{:.1}", s.rate),
            s.total.to_string(),
        ]);
        if s.rate > 0.0 { row.yellow() } else { row }
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(["signal", "/s", "total"]).bold())
            .block(Block::bordered().title(" signals ")),
        area,
    );
}

fn draw_alarms(frame: &mut Frame, area: Rect, view: &View) {
    let raised = view.alarms.iter().filter(|a| a.in_alarm).count();
    let block = Block::bordered().title(match view.alarms.len() {
        0 => " behaviours ".to_owned(),
        all => format!(" behaviours: {raised} of {all} in alarm "),
    });
    if view.alarms.is_empty() {
        frame.render_widget(
            Paragraph::new("none given (a behaviours file in the configuration is judged here)")
                .block(block),
            area,
        );
        return;
    }
    // Those in alarm first, so a screen too short for all still shows them.
    let alarms = view.alarms.iter().filter(|a| a.in_alarm);
    let rows = alarms
        .chain(view.alarms.iter().filter(|a| !a.in_alarm))
        .map(|a| {
            let state = match a.in_alarm {
                true => Cell::from("IN ALARM").red().bold(),
                false => Cell::from("normal").green(),
            };
            Row::new([
                Cell::from(clean(&a.behavior)),
                Cell::from(a.metric.clone()),
                state,
                Cell::from(a.changed.clone().unwrap_or_default()),
            ])
        });
    let widest = |of: fn(&Alarm) -> &str, most: usize| {
        let widest = view.alarms.iter().map(|a| of(a).chars().count()).max();
        Constraint::Length(u16::try_from(widest.unwrap_or(0).min(most)).unwrap_or(0))
    };
    let widths = [
        widest(|a| &a.behavior, 28),
        widest(|a| &a.metric, 36),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    frame.render_widget(Table::new(rows, widths).block(block), area);
}

/// A signal's name in a narrow column.
fn label(name: &str) -> &str {
    const LABELS: [(&str, &str); 12] = [
        (catalog::OPENED.name, "tcp opened"),
        (catalog::OPENED_INBOUND.name, "tcp opened in"),
        (catalog::OPENED_OUTBOUND.name, "tcp opened out"),
        (catalog::SHORT_LIVED.name, "tcp short-lived"),
        (catalog::RESETS.name, "tcp resets sent"),
        (catalog::FAILED.name, "tcp failed"),
        (catalog::RETRANSMITTED.name, "tcp retransmits"),
        (catalog::CLOSED_PORTS.name, "tcp closed ports"),
        (catalog::CLOSED_UDP_PORTS.name, "udp closed ports"),
        (catalog::EXECUTIONS.name, "executions"),
        (catalog::PROCESSES_CREATED.name, "new processes"),
        (catalog::DROPPED.name, "details dropped"),
    ];
    LABELS.iter().find(|(metric, _)| *metric == name).map_or(
        name.strip_prefix("interval_").unwrap_or(name),
        |(_, label)| label,
    )
}

/// A byte count in at most five characters: `980`, `1.2k`, `34M`.
pub fn short(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => bytes.to_string(),
        _ if value < 9.95 => format!("{value:.1}{}", UNITS[unit]),
        _ => format!("{value:.0}{}", UNITS[unit]),
    }
}

/// The newest `width` values as bars, each scaled to the largest of them.
fn sparkline(values: impl DoubleEndedIterator<Item = u64>, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut newest: Vec<u64> = values.rev().take(width).collect();
    newest.reverse();
    let top = newest.iter().copied().max().unwrap_or(0);
    newest
        .iter()
        .map(|&v| match (v, top) {
            (0, _) => ' ',
            (v, top) => {
                let step = u128::from(v) * 7 / u128::from(top);
                BARS[usize::try_from(step).unwrap_or(7).min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates_are_one_short_token() {
        assert_eq!(short(0), "0");
        assert_eq!(short(999), "999");
        assert_eq!(short(1_000), "1.0k");
        assert_eq!(short(1_234), "1.2k");
        assert_eq!(short(56_789), "57k");
        assert_eq!(short(999_600), "1.0M");
        assert_eq!(short(u64::MAX), "18447P");
    }

    #[test]
    fn sparklines_show_the_newest_values_scaled_to_the_largest() {
        assert_eq!(sparkline([1, 2, 0, 7, 14].into_iter(), 4), "▂ ▄█");
        assert_eq!(sparkline([0, 0].into_iter(), 10), "  ");
    }
}
