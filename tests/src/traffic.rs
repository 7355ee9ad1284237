//! Traffic a test makes and counts itself: UDP datagrams each received (and across a pair,
//! added up as tern's reports must count them), and TCP connections held open by a child
//! process.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use crate::{LinkStats, Netns, Pair, UDP_OVERHEAD};

/// Sends `count` datagrams of `size` bytes from `from` to `to`, in small batches each
/// received before the next, so no socket buffer or backlog overflows and every datagram
/// sent is a datagram on the wire and received.
pub fn transfer(from: &UdpSocket, to: &UdpSocket, count: u64, size: usize) {
    let dest = to.local_addr().expect("receiver address");
    let payload = vec![0x5a; size];
    let mut buf = vec![0u8; size + 1];
    to.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(16);
        for _ in 0..batch {
            from.send_to(&payload, dest).expect("send_to");
        }
        for _ in 0..batch {
            let n = to
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {sent} of {count} never arrived: {e}"));
            assert_eq!(n, size);
            sent += 1;
        }
    }
}

/// Datagrams across a pair's veth link, with the traffic they make on `a`'s side.
pub struct Datagrams {
    a: UdpSocket,
    b: UdpSocket,
    pub sent: LinkStats,
}

impl Datagrams {
    pub fn new(pair: &Pair) -> Self {
        let (a, b) = pair.udp();
        Self {
            a,
            b,
            sent: LinkStats::default(),
        }
    }

    /// `count_in` datagrams of `size_in` bytes into `a`'s namespace and `count_out` of
    /// `size_out` out of it.
    pub fn send(&mut self, count_in: u64, size_in: usize, count_out: u64, size_out: usize) {
        transfer(&self.b, &self.a, count_in, size_in);
        transfer(&self.a, &self.b, count_out, size_out);
        self.sent.packets_in += count_in;
        self.sent.bytes_in += count_in * (size_in as u64 + UDP_OVERHEAD);
        self.sent.packets_out += count_out;
        self.sent.bytes_out += count_out * (size_out as u64 + UDP_OVERHEAD);
    }
}

/// A child process in a namespace holding TCP connections open until dropped: one process
/// may not hold both ends of 10,000 connections. It is the calling test binary again,
/// running its ignored test `hold_connections`, which calls [`hold_connections`].
pub struct Clients(Child);

impl Clients {
    pub fn connect(ns: &Netns, host: &str, port: u16, count: usize) -> Self {
        let mut child = spawn_holder(ns, "hold_connections", CLIENTS_VAR, host, port, count);
        assert!(
            read_until(&mut child, "connected"),
            "the client process did not connect"
        );
        Self(child)
    }
}

/// A child process in a namespace accepting TCP connections and holding them until dropped:
/// the calling test binary again, running its ignored test `hold_accepted`, which calls
/// [`hold_accepted`]. With [`Clients`] on the other side, connections beyond what one
/// process may hold open.
pub struct Accepted(Child);

impl Accepted {
    /// Starts listening on `host:port` in `ns` for `count` connections; `wait` returns once
    /// all are accepted.
    pub fn listen(ns: &Netns, host: &str, port: u16, count: usize) -> Self {
        let mut child = spawn_holder(ns, "hold_accepted", ACCEPTED_VAR, host, port, count);
        assert!(
            read_until(&mut child, "listening"),
            "the accepting process did not listen"
        );
        Self(child)
    }

    pub fn wait(&mut self) {
        assert!(
            read_until(&mut self.0, "accepted"),
            "the accepting process did not accept every connection"
        );
    }
}

const CLIENTS_VAR: &str = "HOLD_CONNECTIONS";
const ACCEPTED_VAR: &str = "HOLD_ACCEPTED";

/// The calling test binary again in `ns`, running its ignored test `test` with `var` set to
/// "host port count".
fn spawn_holder(ns: &Netns, test: &str, var: &str, host: &str, port: u16, count: usize) -> Child {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--ignored", "--nocapture"])
        .env(var, format!("{host} {port} {count}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {test}: {e}"))
}

/// Whether `child` printed the line `wanted` within its next 100 lines.
fn read_until(child: &mut Child, wanted: &str) -> bool {
    let mut reader = BufReader::new(child.stdout.as_mut().expect("stdout"));
    let mut line = String::new();
    (0..100).any(|_| {
        line.clear();
        reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() == wanted
    })
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// "host port count" from `var`; None when this process is not a holder.
fn spec(var: &str) -> Option<(String, u16, usize)> {
    let spec = std::env::var(var).ok()?;
    let parts: Vec<&str> = spec.split(' ').collect();
    Some((
        parts[0].to_owned(),
        parts[1].parse().expect("a port"),
        parts[2].parse().expect("a count"),
    ))
}

/// Prints `done`, then holds `held` until killed, stdin closes, or ten minutes pass.
fn hold<T>(held: T, done: &str) {
    println!("{done}");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(600));
        std::process::exit(0);
    });
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
    drop(held);
}

/// The body of a test binary's `hold_connections`: connects as HOLD_CONNECTIONS says
/// ("host port count"), prints "connected", and holds. Does nothing when run as an
/// ordinary test.
pub fn hold_connections() {
    let Some((host, port, count)) = spec(CLIENTS_VAR) else {
        return;
    };
    let held: Vec<TcpStream> = (0..count)
        .map(|_| TcpStream::connect((host.as_str(), port)).expect("connect"))
        .collect();
    hold(held, "connected");
}

/// The body of a test binary's `hold_accepted`: listens as HOLD_ACCEPTED says ("host port
/// count"), prints "listening", accepts that many, prints "accepted", and holds. Does
/// nothing when run as an ordinary test.
pub fn hold_accepted() {
    let Some((host, port, count)) = spec(ACCEPTED_VAR) else {
        return;
    };
    let listener = TcpListener::bind((host.as_str(), port)).expect("listen");
    println!("listening");
    let held: Vec<TcpStream> = (0..count)
        .map(|_| listener.accept().expect("accept").0)
        .collect();
    hold(held, "accepted");
}

/// `count` TCP connections from `client` to a listener on `host:port` in `server`: the
/// client ends in a [`Clients`] process, the accepted ends returned with it, all held open
/// until dropped.
pub fn open_connections(
    server: &Netns,
    client: &Netns,
    host: &'static str,
    port: u16,
    count: usize,
) -> (Clients, Vec<TcpStream>) {
    let listener = server.enter(move || TcpListener::bind((host, port)).unwrap());
    // Accepted while the clients connect: the backlog is smaller than the count.
    let accepting = thread::spawn(move || {
        (0..count)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients = Clients::connect(client, host, port, count);
    (clients, accepting.join().unwrap())
}

/// File descriptors this process and its children may hold: raised to `wanted` where the
/// hard limit allows it or the test may raise that (CAP_SYS_RESOURCE), else to the hard
/// limit.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a valid rlimit of this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0);
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_cur.max(wanted),
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
            return raised.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit), 0);
        limit.rlim_cur
    }
}
