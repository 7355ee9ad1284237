//! A throwaway PKI made with openssl: a certificate authority, the broker's certificate and
//! client certificates whose common name is the thing name.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::{TempDir, sh};

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
