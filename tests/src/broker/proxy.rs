//! A TCP proxy between tern and its broker that can cut or freeze the link.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::Netns;

/// A TCP proxy on 127.0.0.1:`listen` to 127.0.0.1:`to` in a namespace, standing for the
/// network between tern and its broker. `cut` closes every connection (a clean drop);
/// `freeze` stops moving bytes and accepting, with every socket left open (a half-open link,
/// as a paused proxy process gives); `thaw` resumes.
pub struct Proxy {
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(ns: &Netns, listen: u16, to: u16) -> Self {
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let (frozen, stop, links) = (frozen.clone(), stop.clone(), links.clone());
            ns.spawn(move || {
                let listener = TcpListener::bind(("127.0.0.1", listen)).expect("proxy bind");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    if frozen.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            };
                            let mut all = links.lock().unwrap();
                            all.push(client.try_clone().unwrap());
                            all.push(server.try_clone().unwrap());
                            drop(all);
                            pump(
                                client.try_clone().unwrap(),
                                server.try_clone().unwrap(),
                                &frozen,
                            );
                            pump(server, client, &frozen);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        ready
            .recv_timeout(Duration::from_secs(5))
            .expect("the proxy did not start");
        Self {
            frozen,
            stop,
            links,
            thread: Some(thread),
        }
    }

    /// Closes every connection through the proxy; new ones are still accepted.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(Shutdown::Both);
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thaw();
        self.cut();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies bytes from `from` to `to` on a thread until either side closes; holds still while
/// frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &Arc<AtomicBool>) {
    let frozen = Arc::clone(frozen);
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if frozen.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
