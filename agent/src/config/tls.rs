//! The TLS material, loaded into memory once at setup: the device certificate and private key,
//! the CA the broker must chain to, and the rustls client configuration built from them.
//! Every problem is named with its file and the fix. Never connects anywhere.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use super::{Problem, problem};
use crate::host::files::{self, Links};

/// A certificate file, CA bundles included, stays well under this.
const CERTS_MAX: u64 = 4 << 20;
/// A PEM private key stays well under this.
const KEY_MAX: u64 = 64 << 10;

pub fn load_cert(path: &Path, problems: &mut Vec<Problem>) -> Option<Vec<CertificateDer<'static>>> {
    let chain = read_certs(path, "cert", "the device certificate", problems)?;
    check_validity(path, "cert", &chain[0], problems);
    Some(chain)
}

fn read_certs(
    path: &Path,
    key: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = match files::read(path, CERTS_MAX, Links::Follow) {
        Ok(read) => read.bytes,
        Err(e) => {
            problem(
                problems,
                format!(
                    "{key} {}: cannot read it ({e}); set {key} to {what}",
                    path.display()
                ),
            );
            return None;
        }
    };
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<std::result::Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => {
            for cert in &certs {
                if let Err(e) = x509_parser::parse_x509_certificate(cert) {
                    problem(
                        problems,
                        format!(
                            "{key} {}: a certificate in it does not parse ({e}); set {key} to \
                             {what} as PEM",
                            path.display()
                        ),
                    );
                    return None;
                }
            }
            Some(certs)
        }
        Ok(_) => {
            problem(
                problems,
                format!(
                    "{key} {}: holds no PEM certificate; set {key} to {what} as PEM",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            problem(
                problems,
                format!(
                    "{key} {}: cannot read a PEM certificate from it ({e}); set {key} to {what} \
                     as PEM",
                    path.display()
                ),
            );
            None
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_validity(path: &Path, key: &str, cert: &CertificateDer<'_>, problems: &mut Vec<Problem>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return;
    };
    let validity = parsed.validity();
    let now = now_secs();
    if now < validity.not_before.timestamp() {
        problem(
            problems,
            format!(
                "{key} {}: the certificate is not valid before {}; check the system clock or \
                 issue a new certificate",
                path.display(),
                validity.not_before
            ),
        );
    } else if now > validity.not_after.timestamp() {
        problem(
            problems,
            format!(
                "{key} {}: the certificate expired on {}; issue a new certificate",
                path.display(),
                validity.not_after
            ),
        );
    }
}

/// The one read of a private key file, for `run`, `check-config` and `install`: its bytes,
/// or None when it cannot be read or its mode lets its group or others read or write it
/// (any local account could then impersonate the device); a key failing that is not read.
pub fn check_private_key(path: &Path, problems: &mut Vec<Problem>) -> Option<Vec<u8>> {
    let (file, meta) = match files::open(path, Links::Follow) {
        Ok(opened) => opened,
        Err(e) => {
            unreadable(path, &e, problems);
            return None;
        }
    };
    // The mode of the file opened, not of whatever the path names a moment later.
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        problem(
            problems,
            format!(
                "key {}: the private key is readable by group or others (mode {mode:03o}); run \
                 chmod 600 {}",
                path.display(),
                path.display()
            ),
        );
        return None;
    }
    match files::read_opened(file, meta, KEY_MAX) {
        Ok(read) => Some(read.bytes),
        Err(e) => {
            unreadable(path, &e, problems);
            None
        }
    }
}

fn unreadable(path: &Path, e: &std::io::Error, problems: &mut Vec<Problem>) {
    problem(
        problems,
        format!(
            "key {}: cannot read it ({e}); set key to the device private key",
            path.display()
        ),
    );
}

pub fn load_key(path: &Path, problems: &mut Vec<Problem>) -> Option<PrivateKeyDer<'static>> {
    let bytes = check_private_key(path, problems)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(e) => {
            problem(
                problems,
                format!(
                    "key {}: holds no PEM private key ({e}); set key to the device private key \
                     (PKCS#8, PKCS#1 or SEC1 PEM)",
                    path.display()
                ),
            );
            None
        }
    }
}

pub fn load_roots(path: &Path, problems: &mut Vec<Problem>) -> Option<RootCertStore> {
    let what = "the CA certificate the broker's certificate chains to";
    let certs = read_certs(path, "root-ca", what, problems)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            problem(
                problems,
                format!(
                    "root-ca {}: not a usable CA certificate ({e}); set root-ca to {what}",
                    path.display()
                ),
            );
            return None;
        }
    }
    Some(roots)
}

/// The operating system's trusted CAs, only when `tern.system-roots` asks for them.
pub fn add_system_roots(roots: &mut RootCertStore, source: &str, problems: &mut Vec<Problem>) {
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        problem(
            problems,
            format!(
                "{source}: tern.system-roots is true but no system CA certificate loads ({why}); \
                 install the system's CA bundle or set root-ca"
            ),
        );
    }
}

/// The TLS client configuration with ring as the only crypto provider: the configured CA
/// only, the device certificate and key, TLS 1.2 and 1.3. Host-name checks stay on; there is
/// no way to turn them off.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    alpn: Option<String>,
    cert_path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
    match builder.with_client_auth_cert(chain, key) {
        Ok(mut config) => {
            config.alpn_protocols = alpn.into_iter().map(String::into_bytes).collect();
            Some(config)
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            problem(
                problems,
                format!(
                    "cert {} and key do not match: the key is not the certificate's private \
                     key; set key to the key the certificate was issued for",
                    cert_path.display()
                ),
            );
            None
        }
        Err(e) => {
            problem(
                problems,
                format!(
                    "cert {} with key: unusable ({e}); use an RSA, ECDSA or Ed25519 key",
                    cert_path.display()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_private_key_open_to_group_or_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let key = dir.join("device.key");
        fs::write(&key, "key").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let mut problems = Vec::new();
            check_private_key(&key, &mut problems);
            assert_eq!(problems.is_empty(), ok, "mode {mode:o}: {problems:?}");
            for problem in problems {
                assert!(problem.0.contains("chmod 600"), "{problem}");
            }
        }
        let mut problems = Vec::new();
        check_private_key(&dir.join("missing.key"), &mut problems);
        assert!(!problems.is_empty());
        // A key that fails its mode check is not read.
        fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_private_key(&key, &mut Vec::new()).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificates_and_keys_that_are_fifos_or_devices_are_refused_without_waiting() {
        let mut problems = Vec::new();
        assert!(load_roots(Path::new("/dev/zero"), &mut problems).is_none());
        assert!(load_key(Path::new("/dev/zero"), &mut problems).is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().all(|p| p.0.contains("a device")),
            "{problems:?}"
        );
    }
}
