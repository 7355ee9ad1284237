//! `tern watch` as a person uses it, and a report printed at a terminal: in a tmux terminal, in namespace `a` of a fresh veth
//! pair, with the screen read as it is drawn. The numbers shown are checked against `ip -s
//! link` and the connections the test made; the keys are typed; after the view, the terminal
//! must be the operator's again.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use serde_json::json;
use tern_tests::{ADDR_A, DEV_A, LinkStats, Netns, Pair, Pane, TempDir, Tern, tern_bin, transfer};

const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;
/// A view attaches in seconds and redraws every second.
const SHOWN: Duration = Duration::from_secs(20);

/// A terminal running `tern watch ARGS` in `ns`, then a shell once the view exits.
fn watch(ns: &Netns, dir: &TempDir, args: &[&str]) -> Pane {
    let command = format!(
        "nsenter --net={} {} watch --user nobody --shared-user --state-dir {} {}; \
         echo \"watch exited with $?\"; exec sh",
        ns.path(),
        tern_bin().display(),
        dir.join("state").display(),
        args.join(" ")
    );
    let pane = Pane::start(&command, WIDTH, HEIGHT);
    pane.wait_for("the view", SHOWN, |s| s.contains("tern watch"));
    pane
}

/// The words of a screen line, borders left out.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c == '│' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether a line of the screen holds `wanted`, word after word.
fn shows(screen: &str, wanted: &[&str]) -> bool {
    screen
        .lines()
        .any(|l| words(l).windows(wanted.len()).any(|w| w == wanted))
}

/// The words of the screen's line that starts, inside its border, with `first`, and those
/// of the line below it.
fn rows<'a>(screen: &'a str, first: &str) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines
        .iter()
        .position(|l| words(l).first() == Some(&first))?;
    Some((words(lines[at]), words(lines.get(at + 1)?)))
}

/// The interface totals the view shows for `dev`: packets and bytes, in and out.
fn shown_totals(screen: &str, dev: &str) -> Option<LinkStats> {
    let (inbound, outbound) = rows(screen, dev)?;
    // dev, "in", pkt/s, B/s, packets, bytes; then "out", pkt/s, B/s, packets, bytes.
    let number = |words: &[&str], at: usize| words.get(at)?.parse::<u64>().ok();
    if inbound.get(1) != Some(&"in") || outbound.first() != Some(&"out") {
        return None;
    }
    Some(LinkStats {
        packets_in: number(&inbound, 4)?,
        bytes_in: number(&inbound, 5)?,
        packets_out: number(&outbound, 3)?,
        bytes_out: number(&outbound, 4)?,
    })
}

/// Whether the screen is the shell's again, typing in it included.
fn check_terminal_given_back(pane: &Pane, code: i32) {
    let screen = pane.wait_for("the view's exit", SHOWN, |s| s.contains("watch exited"));
    assert!(
        screen.contains(&format!("watch exited with {code}")),
        "{screen}"
    );
    assert!(
        !screen.contains("┌ traffic"),
        "the view is still on the screen after it exited:\n{screen}"
    );
    // Typed text is echoed and a line ends at Enter only in the terminal's ordinary mode.
    pane.keys(&["echo typed-$((6*7))", "Enter"]);
    pane.wait_for("the shell's answer", SHOWN, |s| s.contains("typed-42"));
}

#[test]
fn the_view_shows_the_traffic_listeners_and_connections_the_test_made_and_q_quits() {
    let pair = Pair::new();
    let dir = TempDir::new("watch");
    // Normal is at most one TCP listener: the second, opened while the view runs, is an
    // alarm, judged every second here.
    let behaviors = dir.join("behaviors.json");
    let profile = json!({"behaviors": [{
        "name": "few-listeners",
        "metric": "aws:num-listening-tcp-ports",
        "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 1},
                     "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}
    }]});
    std::fs::write(&behaviors, profile.to_string()).unwrap();
    let older = pair
        .a
        .enter(|| TcpListener::bind((ADDR_A, 7001)).expect("listen on 7001"));
    let before = pair.a.link_stats(DEV_A);
    let pane = watch(
        &pair.a,
        &dir,
        &[
            "--interval",
            "1",
            "--behaviors",
            &behaviors.display().to_string(),
        ],
    );
    let screen = pane.wait_for("the older listener", SHOWN, |s| {
        shows(s, &["tcp", "7001", "ta"])
    });
    assert!(!shows(&screen, &["tcp", "7001", "ta", "new"]), "{screen}");

    let (a, b) = pair.udp();
    transfer(&b, &a, 400, 1000);
    transfer(&a, &b, 250, 200);
    let newer = pair
        .a
        .enter(|| TcpListener::bind(("0.0.0.0", 8089)).expect("listen on 8089"));
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| {
            pair.b
                .enter(|| TcpStream::connect((ADDR_A, 8089)).expect("connect to 8089"))
        })
        .collect();
    let accepted: Vec<TcpStream> = (0..3).map(|_| newer.accept().unwrap().0).collect();

    // The link is quiet from here: what `ip -s link` counted since the start is what the
    // view must show.
    let truth = pair.a.link_stats(DEV_A).since(before);
    assert!(
        truth.packets_in >= 400 && truth.packets_out >= 250,
        "{truth:?}"
    );
    let screen = pane.wait_for("the traffic ip -s link counted", SHOWN, |s| {
        shown_totals(s, DEV_A) == Some(truth)
    });
    assert!(shows(&screen, &["tcp", "8089", "*", "new"]), "{screen}");
    pane.wait_for("three connections from b, opened inbound", SHOWN, |s| {
        s.contains("established 3 ")
            && shows(s, &["10.77.0.2", "3"])
            && s.lines()
                .any(|l| l.contains("tcp opened in ") && words(l).last() == Some(&"3"))
    });
    pane.wait_for("the alarm of the second listener", SHOWN, |s| {
        s.lines()
            .any(|l| l.contains("few-listeners") && l.contains("IN ALARM"))
    });

    // Paused, the view says so; `s` orders by name.
    pane.keys(&["p"]);
    pane.wait_for("the pause", SHOWN, |s| s.contains("PAUSED"));
    pane.keys(&["p", "s"]);
    pane.wait_for("the order by name", SHOWN, |s| {
        s.contains("sort: name") && !s.contains("PAUSED")
    });

    pane.keys(&["q"]);
    check_terminal_given_back(&pane, 0);
    drop((older, newer, clients, accepted));
}

#[test]
fn a_view_beside_the_agent_leaves_the_agents_counts_whole() {
    let pair = Pair::new();
    let before = pair.a.link_stats(DEV_A);
    let tern = Tern::start(&pair.a, &["--interval", "1"]);
    let dir = TempDir::new("watch");
    let pane = watch(&pair.a, &dir, &[]);
    let (a, b) = pair.udp();
    transfer(&b, &a, 300, 500);
    pane.wait_for("the view's count", SHOWN, |s| {
        shown_totals(s, DEV_A).is_some_and(|t| t.packets_in == 300)
    });
    pane.keys(&["q"]);
    check_terminal_given_back(&pane, 0);
    // Counted by the agent alone again, once the view let go of the interface.
    transfer(&a, &b, 200, 300);
    let stopped = tern.stop();
    assert_eq!(stopped.code, Some(0), "{:?}", stopped.log);
    let counted = LinkStats::reported(stopped.reports.iter());
    assert_eq!(counted, pair.a.link_stats(DEV_A).since(before));
    assert_eq!((counted.packets_in, counted.packets_out), (300, 200));
}

#[test]
fn ctrl_c_quits_and_a_terminal_too_small_ends_the_view_with_the_size_it_needs() {
    let ns = Netns::new("watch");
    let dir = TempDir::new("watch");
    let pane = watch(&ns, &dir, &[]);
    pane.keys(&["C-c"]);
    check_terminal_given_back(&pane, 0);

    let pane = watch(&ns, &dir, &[]);
    pane.resize(60, 20);
    check_terminal_given_back(&pane, 1);
    pane.wait_for("the size needed", SHOWN, |s| {
        s.contains("the terminal is 60x20: tern watch needs at least 80x24")
    });
}

#[test]
fn a_report_at_a_terminal_is_indented_and_in_a_pipe_is_one_line() {
    let ns = Netns::new("pretty");
    let dir = TempDir::new("pretty");
    let run = format!(
        "nsenter --net={} {} run --output stdout --interval 1 --count 1 --user nobody \
         --shared-user --state-dir {} 2>/dev/null",
        ns.path(),
        tern_bin().display(),
        dir.join("state").display(),
    );
    let pane = Pane::start(
        &format!("{run}; {run} | wc -l | sed 's/^/lines in a pipe: /'; exec sh"),
        WIDTH,
        HEIGHT,
    );
    pane.wait_for("the piped report", SHOWN, |s| {
        s.contains("lines in a pipe: ")
    });
    let printed = pane.history();
    assert!(printed.contains("lines in a pipe: 1\n"), "{printed}");
    let lines: Vec<&str> = printed.lines().map(str::trim_end).collect();
    let at = lines
        .iter()
        .position(|l| *l == "{")
        .unwrap_or_else(|| panic!("no report opens on a line of its own:\n{printed}"));
    // Two spaces a level: the document's members, each on a line of its own.
    for member in ["custom_metrics", "header", "metrics"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("  \"{member}\": {{"))),
            "no line of its own for {member}:\n{printed}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    \"network_stats\": {")),
        "{printed}"
    );
    let close = lines[at..].iter().position(|l| *l == "}").map(|n| at + n);
    let report: serde_json::Value = serde_json::from_str(
        &lines[at..=close.unwrap_or_else(|| panic!("the report never closes:\n{printed}"))]
            .join("\n"),
    )
    .expect("the indented report is JSON");
    assert_eq!(report["header"]["version"], "1.0");
}
