//! TLS and mTLS to a real sidecar on loopback TCP, configured through the same
//! environment variables as the Python client, and through ConnectOptions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use agent_recorder_client::{ConnectOptions, DeliveryConfig, RecorderClient};
use support::*;
use tonic::Code;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the
/// `cryptography` package of the sidecar's virtualenv (PEM files in `dir`).
fn make_pki(dir: &Path) -> Option<()> {
    let python = sidecar_binary()?.with_file_name("python");
    let script = r#"
import datetime, sys
from ipaddress import IPv4Address
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
out = Path(sys.argv[1])
now = datetime.datetime.now(datetime.UTC)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def write(stem, cert, key):
    (out / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
def build(subject, issuer, key):
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1)))
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = build("test-ca", "test-ca", ca_key).add_extension(
    x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
write("ca", ca, ca_key)
for stem, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = build(stem, "test-ca", key).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if stem == "server":
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    write(stem, builder.sign(ca_key, hashes.SHA256()), key)
"#;
    let done = Command::new(python)
        .args(["-c", script])
        .arg(dir)
        .status()
        .expect("python");
    assert!(done.success(), "making certificates failed");
    Some(())
}

fn pem(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[tokio::test]
async fn mtls_with_the_environment_variables_records_and_without_a_client_cert_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    if make_pki(pki.path()).is_none() {
        return;
    }
    let path = |name: &str| pem(pki.path(), name).to_str().unwrap().to_string();
    let tls_args = [
        "--tls-cert".to_string(),
        path("server.crt"),
        "--tls-key".to_string(),
        path("server.key"),
        "--tls-client-ca".to_string(),
        path("ca.crt"),
    ];
    let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let Some(sidecar) = Sidecar::start_tcp(&args) else {
        return;
    };
    // Discovery as the Python client does it: target, CA, cert and key from the environment.
    let env = |name: &str| match name {
        "AGENT_RECORDER_TARGET" => Some(sidecar.target()),
        "AGENT_RECORDER_TLS_CA" => Some(path("ca.crt")),
        "AGENT_RECORDER_TLS_CERT" => Some(path("client.crt")),
        "AGENT_RECORDER_TLS_KEY" => Some(path("client.key")),
        _ => None,
    };
    let client = RecorderClient::connect_with_env(ConnectOptions::default(), &env).unwrap();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let events = loop_events("s-tls", "s-tls.default.0", 2, 1);
    for event in &events {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    assert_eq!(stored_events(&client, "s-tls.default.0").await, events);

    // TLS with the right CA but no client certificate: the server refuses it. With
    // TLS 1.3 that happens after the handshake, and the transport reports it as a
    // cancelled call or a transport error depending on when the alert arrives.
    let anonymous = RecorderClient::connect(ConnectOptions {
        target: Some(sidecar.target()),
        tls_ca: Some(pem(pki.path(), "ca.crt")),
        ..Default::default()
    })
    .unwrap();
    let refused = anonymous.get_session("s-tls").await.unwrap_err();
    assert!(
        matches!(
            refused.code,
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ),
        "{refused}"
    );
}

#[test]
fn a_certificate_without_its_key_is_refused_before_dialing() {
    let error = RecorderClient::connect(ConnectOptions {
        target: Some("127.0.0.1:1".into()),
        tls_cert: Some("/nonexistent/client.crt".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tls_cert and tls_key go together"),
        "{error}"
    );
}
