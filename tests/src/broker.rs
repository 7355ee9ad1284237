//! A real MQTT side for tern's publishing tests: a throwaway PKI made with openssl, a
//! mosquitto broker with mutual TLS and per-thing ACLs, a responder playing the Device
//! Defender service (it checks each report against the document rules and replies accepted
//! or rejected), and a TCP proxy that can cut or freeze the link. All of it runs on
//! loopback inside a test namespace and is stopped and removed when dropped.

use std::{
    collections::HashMap,
    fs,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rumqttc::{
    Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
    tokio_rustls::rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use serde_json::{Value, json};

use crate::{Netns, TempDir, sh};

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway certificate authority (EC P-256) with a broker certificate for `localhost`
/// and 127.0.0.1, and client certificates whose CN is the thing name.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server: Identity,
}

const OPENSSL_REQ: &str = "[req]\ndistinguished_name = dn\nx509_extensions = v3\n[dn]\n\
[v3]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
subjectKeyIdentifier = hash\n";

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("pki-{tag}"));
        fs::write(dir.join("req.cnf"), OPENSSL_REQ).unwrap();
        let ca_key = new_key(&dir.join("ca.key"));
        let ca = dir.join("ca.pem");
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-config",
            path(&dir.join("req.cnf")),
            "-key",
            path(&ca_key),
            "-subj",
            &format!("/CN=tern test CA {tag}"),
            "-days",
            "2",
            "-out",
            path(&ca),
        ]);
        let mut pki = Self {
            dir,
            ca,
            server: Identity {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
        };
        pki.server = pki.issue(
            "server",
            "localhost",
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
        );
        pki
    }

    /// A client certificate with CN `thing`.
    pub fn client(&self, thing: &str) -> Identity {
        self.issue(
            &format!("client-{thing}"),
            thing,
            "extendedKeyUsage = clientAuth\n",
        )
    }

    /// A client certificate valid only from `start` to `end` (`YYYYMMDDHHMMSSZ`).
    pub fn dated_client(&self, thing: &str, start: &str, end: &str) -> Identity {
        let name = format!("dated-{thing}-{start}");
        let (key, csr) = self.request(&name, thing);
        let db = self.dir.join("ca-db");
        fs::create_dir_all(&db).unwrap();
        if !db.join("index.txt").exists() {
            fs::write(db.join("index.txt"), "").unwrap();
            fs::write(db.join("serial"), "1000\n").unwrap();
        }
        let conf = db.join("ca.cnf");
        fs::write(
            &conf,
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\n\
                 serial = {0}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
                 [p]\ncommonName = supplied\n",
                db.display()
            ),
        )
        .unwrap();
        let cert = self.dir.join(&format!("{name}.pem"));
        openssl(&[
            "ca",
            "-config",
            path(&conf),
            "-batch",
            "-notext",
            "-cert",
            path(&self.ca),
            "-keyfile",
            path(&self.dir.join("ca.key")),
            "-in",
            path(&csr),
            "-out",
            path(&cert),
            "-startdate",
            start,
            "-enddate",
            end,
        ]);
        Identity { cert, key }
    }

    /// A new key `name.key` and a request `name.csr` for common name `cn`.
    fn request(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let key = new_key(&self.dir.join(&format!("{name}.key")));
        let csr = self.dir.join(&format!("{name}.csr"));
        openssl(&[
            "req",
            "-new",
            "-config",
            path(&self.dir.join("req.cnf")),
            "-key",
            path(&key),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            path(&csr),
        ]);
        (key, csr)
    }

    fn issue(&self, name: &str, cn: &str, extensions: &str) -> Identity {
        let (key, csr) = self.request(name, cn);
        let ext = self.dir.join(&format!("{name}.ext"));
        fs::write(
            &ext,
            format!("[e]\nbasicConstraints = CA:FALSE\n{extensions}"),
        )
        .unwrap();
        let cert = self.dir.join(&format!("{name}.pem"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca),
            "-CAkey",
            path(&self.dir.join("ca.key")),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-extensions",
            "e",
            "-out",
            path(&cert),
        ]);
        Identity { cert, key }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn openssl(args: &[&str]) {
    sh("openssl", args);
}

/// An EC P-256 private key, readable by its owner only.
fn new_key(file: &Path) -> PathBuf {
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        path(file),
    ]);
    fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
    file.to_path_buf()
}

/// The thing name the responder connects as; the ACL gives it every `$aws` topic.
pub const CLOUD: &str = "cloud";

/// mosquitto with mutual TLS on `port` (every loopback address) in a namespace: the client
/// certificate's CN is the user name, and each thing may only publish its own reports and
/// read its own replies.
pub struct Mosquitto {
    ns: String,
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(ns: &Netns, pki: &Pki, port: u16) -> Self {
        let dir = TempDir::new("mosquitto");
        let acl = dir.join("acl");
        fs::write(
            &acl,
            "pattern write $aws/things/%u/defender/metrics/json\n\
             pattern write $aws/things/%u/defender/metrics/cbor\n\
             pattern read $aws/things/%u/defender/metrics/+/accepted\n\
             pattern read $aws/things/%u/defender/metrics/+/rejected\n\
             user cloud\n\
             topic readwrite $aws/#\n",
        )
        .unwrap();
        fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "user root\nper_listener_settings false\nallow_anonymous false\n\
                 acl_file {acl}\npersistence true\npersistence_location {dir}/\n\
                 log_dest file {dir}/mosquitto.log\nlog_type all\n\
                 listener {port}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                acl = acl.display(),
                dir = dir.path.display(),
                ca = pki.ca.display(),
                cert = pki.server.cert.display(),
                key = pki.server.key.display(),
            ),
        )
        .unwrap();
        let mut broker = Self {
            ns: ns.name.clone(),
            dir,
            port,
            child: None,
        };
        broker.restart();
        broker
    }

    /// Starts the broker again (after `stop`) with its saved sessions, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "mosquitto", "-c"])
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let port = self.port;
        let ns = format!("/run/netns/{}", self.ns);
        let up = run_in(&ns, move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return true;
                }
                thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .join()
        .unwrap();
        assert!(up, "mosquitto did not listen within 10 s: {}", self.log());
    }

    /// Stops the broker cleanly (it saves its sessions, as a broker restart does).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `ns_path`.
fn run_in<T: Send + 'static>(
    ns_path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns_path = ns_path.to_owned();
    thread::spawn(move || {
        let ns = fs::File::open(&ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// How the responder answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdicts {
    /// Accepted when the report follows the document rules, rejected otherwise.
    Judge,
    /// Every report rejected, as the service does with a report it cannot take.
    RejectAll,
}

/// One report the responder received.
#[derive(Clone, Debug)]
pub struct Received {
    pub thing: String,
    pub report: Value,
    /// None when accepted, else the reason for rejecting it.
    pub rejected: Option<String>,
    /// The broker marked it a redelivery: it handed the responder this message before
    /// without seeing the responder's acknowledgement (around a broker restart).
    pub redelivered: bool,
}

/// Plays the Device Defender service: subscribes to every thing's JSON and CBOR reports with a
/// persistent session (so reports published while it reconnects are kept for it), checks
/// each one and answers on the thing's accepted or rejected topic with the reportId.
pub struct Responder {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Netns, pki: &Pki, port: u16, verdicts: Verdicts) -> Self {
        let identity = pki.client(CLOUD);
        let tls = tls_config(&pki.ca, &identity);
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            run_in(&format!("/run/netns/{}", ns.name), move || {
                serve(tls, port, verdicts, &received, &stop, &subscribed_tx);
            })
        };
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("the responder did not subscribe within 10 s");
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` reports have arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the responder got {} report(s), not {n}, within {timeout:?}",
                got.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn tls_config(ca: &Path, identity: &Identity) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&identity.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&identity.key).unwrap();
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

fn serve(
    tls: ClientConfig,
    port: u16,
    verdicts: Verdicts,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    subscribed: &std::sync::mpsc::Sender<()>,
) {
    let mut options = MqttOptions::new(CLOUD, "localhost", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    let (client, mut connection) = Client::new(options, 64);
    let mut last_id: HashMap<String, u64> = HashMap::new();
    let mut subacks = 0;
    while !stop.load(Ordering::SeqCst) {
        let event = match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(event)) => event,
            Ok(Err(_)) => {
                // The broker is down or restarting: try again soon.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(_) => continue,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                for format in ["json", "cbor"] {
                    client
                        .subscribe(
                            format!("$aws/things/+/defender/metrics/{format}"),
                            QoS::AtLeastOnce,
                        )
                        .unwrap();
                }
            }
            Event::Incoming(Packet::SubAck(_)) => {
                // Ready once both first subscriptions (JSON and CBOR) are in place.
                subacks += 1;
                if subacks == 2 {
                    let _ = subscribed.send(());
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let topic = publish.topic.clone();
                let Some((thing, cbor)) = topic.strip_prefix("$aws/things/").and_then(|t| {
                    t.strip_suffix("/defender/metrics/json")
                        .map(|thing| (thing, false))
                        .or_else(|| {
                            t.strip_suffix("/defender/metrics/cbor")
                                .map(|thing| (thing, true))
                        })
                }) else {
                    continue;
                };
                let parsed: Result<Value, String> = if cbor {
                    ciborium::from_reader(&publish.payload[..])
                        .map_err(|e| format!("not CBOR: {e}"))
                } else {
                    serde_json::from_slice(&publish.payload).map_err(|e| format!("not JSON: {e}"))
                };
                let report = parsed.clone().unwrap_or(Value::Null);
                let id = report["header"]["report_id"].as_u64();
                let mut verdict = parsed.and_then(|r| crate::schema::validate(&r).map(|_| ()));
                if let (Ok(()), Some(id)) = (&verdict, id) {
                    let last = last_id.entry(thing.to_owned()).or_default();
                    if id < *last {
                        verdict = Err(format!("report_id {id} after {last}"));
                    }
                    *last = (*last).max(id);
                }
                if verdicts == Verdicts::RejectAll {
                    verdict = Err("rejected by the test".into());
                }
                let (suffix, body) = match &verdict {
                    Ok(()) => (
                        "accepted",
                        json!({"thingName": thing, "reportId": id, "status": "ACCEPTED",
                               "timestamp": now_ms()}),
                    ),
                    Err(why) => (
                        "rejected",
                        json!({"thingName": thing, "reportId": id, "status": "REJECTED",
                               "statusDetails": {"ErrorCode": "InvalidPayload",
                                                 "ErrorMessage": why},
                               "timestamp": now_ms()}),
                    ),
                };
                received.lock().unwrap().push(Received {
                    thing: thing.to_owned(),
                    report,
                    rejected: verdict.err(),
                    redelivered: publish.dup,
                });
                // The service answers in the report's encoding.
                let body = if cbor {
                    let mut bytes = Vec::new();
                    ciborium::into_writer(&body, &mut bytes).unwrap();
                    bytes
                } else {
                    body.to_string().into_bytes()
                };
                let _ =
                    client.try_publish(format!("{topic}/{suffix}"), QoS::AtLeastOnce, false, body);
            }
            _ => {}
        }
    }
    let _ = client.disconnect();
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = {
            let (frozen, stop, links) = (frozen.clone(), stop.clone(), links.clone());
            run_in(&format!("/run/netns/{}", ns.name), move || {
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
