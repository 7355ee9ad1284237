//! Connection failures in plain words: walks an error's chain (rumqttc wraps TLS alerts and
//! I/O errors several layers deep) and names the cause a person can act on.

use std::{error::Error, io};

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
use rustls::{AlertDescription, CertificateError, PeerIncompatible};

pub struct Failure {
    pub text: String,
    /// The broker refused tern's identity: retrying soon cannot help.
    pub authorization: bool,
}

fn failure(text: String, authorization: bool) -> Failure {
    Failure {
        text,
        authorization,
    }
}

pub fn describe(err: &ConnectionError, host: &str) -> Failure {
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(found) = one(e, host) {
            return found;
        }
        // An io::Error's source() skips the error it wraps; look at that one too.
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(found) = one(inner, host)
        {
            return found;
        }
        next = e.source();
    }
    failure(format!("connection failed: {err}"), false)
}

fn one(e: &(dyn Error + 'static), host: &str) -> Option<Failure> {
    if let Some(e) = e.downcast_ref::<ConnectionError>() {
        return match e {
            ConnectionError::ConnectionRefused(code) => Some(refused(*code)),
            ConnectionError::NetworkTimeout => Some(failure(
                "no answer: the connection or TLS handshake timed out".into(),
                false,
            )),
            ConnectionError::FlushTimeout => Some(failure(
                "the broker stopped reading: sending timed out".into(),
                false,
            )),
            _ => None,
        };
    }
    match e.downcast_ref::<StateError>() {
        Some(StateError::AwaitPingResp) => {
            return Some(failure(
                "the broker stopped answering (no reply to the keep-alive ping); the link is \
                 down or half-open"
                    .into(),
                false,
            ));
        }
        Some(StateError::ConnectionAborted) => {
            return Some(failure(
                "the broker or the network closed the connection".into(),
                false,
            ));
        }
        _ => {}
    }
    if let Some(e) = e.downcast_ref::<rustls::Error>() {
        return Some(tls(e, host));
    }
    if let Some(e) = e.downcast_ref::<io::Error>() {
        return io_failure(e, host);
    }
    None
}

fn refused(code: ConnectReturnCode) -> Failure {
    match code {
        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => failure(
            format!(
                "not authorized: the broker refused the connection ({code:?}); check that the \
                 certificate is active and its policy allows this client id"
            ),
            true,
        ),
        ConnectReturnCode::BadClientId => failure(
            "the broker refused the client id; check thing-name (or tern.client-id)".into(),
            true,
        ),
        other => failure(
            format!("the broker refused the connection ({other:?})"),
            false,
        ),
    }
}

fn tls(e: &rustls::Error, host: &str) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => failure(
            "unknown CA: the broker's certificate is not signed by the CA in root-ca; set \
             root-ca to the broker's CA"
                .into(),
            false,
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => failure(
            format!(
                "name mismatch: the broker's certificate is not valid for {host}; set endpoint \
                 to a name the certificate holds"
            ),
            false,
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => failure("the broker's certificate has expired".into(), false),
        rustls::Error::InvalidCertificate(other) => failure(
            format!("the broker's certificate is not acceptable ({other:?})"),
            false,
        ),
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
        | rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::SupportedVersionsExtensionRequired,
        ) => failure(
            format!(
                "TLS version mismatch: the broker speaks neither TLS 1.2 nor TLS 1.3, the \
                 versions tern speaks, most likely only TLS 1.0 or 1.1 ({e}); enable TLS 1.2 \
                 or 1.3 on the broker"
            ),
            false,
        ),
        rustls::Error::PeerIncompatible(other) => failure(
            format!(
                "TLS mismatch: the broker and tern share no {other:?}; tern offers TLS 1.2 \
                 and 1.3 with their current cipher suites and groups, so configure the broker \
                 to offer them too"
            ),
            false,
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity),
        ) => failure(
            format!(
                "TLS handshake refused (TLS alert {alert:?}): the broker found no cipher suite \
                 or group in common with tern's TLS 1.2 and 1.3 ones, or refused tern's \
                 certificate; check the broker's TLS settings and that it trusts the CA that \
                 issued cert"
            ),
            false,
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied),
        ) => failure(
            format!(
                "certificate refused: the broker rejected tern's certificate (TLS alert \
                 {alert:?}); check that the broker trusts the CA that issued cert and that the \
                 certificate is active"
            ),
            true,
        ),
        rustls::Error::AlertReceived(alert) => failure(
            format!("the broker ended the TLS handshake (TLS alert {alert:?})"),
            false,
        ),
        other => failure(format!("TLS failure: {other}"), false),
    }
}

fn io_failure(e: &io::Error, host: &str) -> Option<Failure> {
    let text = match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing is listening there; is the broker running?".to_owned()
        }
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => {
            "the connection was closed by the broker or the network (a broker may also close \
             it when it refuses tern's certificate)"
                .to_owned()
        }
        io::ErrorKind::TimedOut => "the connection timed out".to_owned(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            format!("{host} is unreachable: no route")
        }
        _ if failed_lookup(e) => {
            format!("DNS failure: cannot resolve {host}; check endpoint and the DNS settings")
        }
        _ => return None,
    };
    Some(failure(text, false))
}

/// Whether `e` is a failed name lookup. The one failure named by its text, for want of a
/// type: std turns a getaddrinfo error into an io::Error of a kind stable Rust cannot name
/// (`Uncategorized`), with no OS error code, and only its message says what failed ("failed
/// to lookup address information: ..."); tokio's `lookup_host` and rumqttc's connect pass it
/// on as it is.
fn failed_lookup(e: &io::Error) -> bool {
    e.raw_os_error().is_none() && e.to_string().contains("lookup address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_deep_in_the_chain_are_named() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let err = ConnectionError::Io(alert);
        let f = describe(&err, "broker");
        assert!(f.text.starts_with("certificate refused"), "{}", f.text);
        assert!(f.authorization);

        for alert in [
            AlertDescription::ProtocolVersion,
            AlertDescription::HandshakeFailure,
            AlertDescription::DecodeError,
        ] {
            let err =
                ConnectionError::Tls(rumqttc::TlsError::TLS(rustls::Error::AlertReceived(alert)));
            let f = describe(&err, "b");
            assert!(!f.text.contains("certificate refused"), "{}", f.text);
            assert!(!f.authorization, "{}", f.text);
        }
        let err = ConnectionError::Tls(rumqttc::TlsError::TLS(rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13,
        )));
        assert!(describe(&err, "b").text.starts_with("TLS version mismatch"));

        let err = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert!(describe(&err, "b").text.starts_with("not authorized"));

        let err = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(describe(&err, "b").text.starts_with("connection refused"));

        let err = ConnectionError::Tls(rumqttc::TlsError::TLS(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        )));
        assert!(
            describe(&err, "b.example")
                .text
                .contains("not valid for b.example")
        );

        let err = ConnectionError::Io(io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert!(describe(&err, "nowhere").text.starts_with("DNS failure"));
    }
}
