//! Connection churn: a server that accepts and resets every connection, and a client that
//! opens and closes connections at a fixed rate for a fixed time. Both ends close with a
//! reset (SO_LINGER 0), so no TIME_WAIT piles up and the client's ports never run out.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{Netns, spawn_in};

fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the given size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Accepts connections on `addr` in `ns` and closes each at once, until dropped.
pub struct Server {
    addr: SocketAddr,
    ns_path: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.enter(move || TcpListener::bind(addr).expect("binding the server"));
        let (stop, accepted) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stop_seen, count) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_seen.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    reset_on_close(&stream);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            addr,
            ns_path: ns.path(),
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A last connection from the server's namespace wakes the accepting thread, which
        // then sees the flag.
        let addr = self.addr;
        let woken = spawn_in(&self.ns_path, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
        .join()
        .unwrap_or(false);
        if let (true, Some(thread)) = (woken, self.thread.take()) {
            let _ = thread.join();
        }
    }
}

/// Opens connections from `ns` to `server` at `rate` per second for `duration` on `threads`
/// threads, each held open `hold` before it is closed. Returns how many connected. A
/// thread that falls behind skips ahead rather than bursting, so the rate is never
/// exceeded; the achieved rate is the returned count over the duration.
pub fn run(
    ns: &Netns,
    server: SocketAddr,
    rate: u32,
    duration: Duration,
    hold: Duration,
    threads: u32,
) -> u64 {
    let connected = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let connected = connected.clone();
            ns.spawn(move || {
                let gap = Duration::from_secs_f64(f64::from(threads) / f64::from(rate));
                let start = Instant::now();
                let end = start + duration;
                let mut next = start;
                let mut open: std::collections::VecDeque<(Instant, TcpStream)> = Default::default();
                while Instant::now() < end {
                    let now = Instant::now();
                    while open.front().is_some_and(|(at, _)| *at <= now) {
                        open.pop_front();
                    }
                    if now >= next {
                        if let Ok(stream) = TcpStream::connect(server) {
                            reset_on_close(&stream);
                            connected.fetch_add(1, Ordering::Relaxed);
                            open.push_back((now + hold, stream));
                        }
                        next += gap;
                        if next < now {
                            next = now + gap;
                        }
                        continue;
                    }
                    let wake = open.front().map_or(next, |(at, _)| (*at).min(next));
                    thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
                // Connections still held are closed when the deque drops, within `hold`.
                if let Some((last, _)) = open.back() {
                    thread::sleep(last.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a churn thread panicked");
    }
    connected.load(Ordering::Relaxed)
}
