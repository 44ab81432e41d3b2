//! A throwaway certificate authority for the TLS tests: a CA, and a server certificate it signed
//! for `localhost` and 127.0.0.1, written as PEM files into a folder of the test's own.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    pub dir: PathBuf,
    /// The CA's certificate: what a client is told to trust.
    pub ca_file: PathBuf,
    /// The server's certificate and key, signed by the CA.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    /// A new CA (named `name`) and a server certificate it signed.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "sidecache-pki-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pki folder");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("sidecache test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");

        let write = |file: &str, pem: String| {
            let path = dir.join(file);
            std::fs::write(&path, pem).expect("pem written");
            path
        };
        Pki {
            ca_file: write("ca.pem", ca_cert.pem()),
            cert_file: write("server.pem", cert.pem()),
            key_file: write("server.key", key.serialize_pem()),
            dir,
        }
    }

    /// Copies the server's certificate and key into `to` (a server that wants them in its own
    /// folder), returning their new paths.
    pub fn copy_server_files(&self, to: &Path) -> (PathBuf, PathBuf) {
        let cert = to.join("server.pem");
        let key = to.join("server.key");
        std::fs::copy(&self.cert_file, &cert).expect("certificate copied");
        std::fs::copy(&self.key_file, &key).expect("key copied");
        (cert, key)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
