//! Certificates for running Heirloom with TLS on one's own machines: a private CA, a
//! server certificate for the coordinator and client certificates for workers (mutual
//! TLS). `heirloom certs` writes them; the tests and the demo use them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub certificate: String,
    pub key: String,
}

/// A CA that signs the certificates below.
pub struct Authority {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        Ok(Authority {
            pem: Pem {
                certificate: certificate.pem(),
                key: key.serialize_pem(),
            },
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate valid for each of `hosts` (names or IP addresses).
    pub fn server(&self, hosts: &[String]) -> Result<Pem, rcgen::Error> {
        self.sign(hosts, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, for mutual TLS, naming `name`.
    pub fn client(&self, name: &str) -> Result<Pem, rcgen::Error> {
        self.sign(&[name.to_string()], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, names: &[String], usage: ExtendedKeyUsagePurpose) -> Result<Pem, rcgen::Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The files `heirloom certs` writes into a directory.
pub const CA_CERT: &str = "ca.pem";
pub const SERVER_CERT: &str = "coordinator.pem";
pub const SERVER_KEY: &str = "coordinator.key";
pub const CLIENT_CERT: &str = "worker.pem";
pub const CLIENT_KEY: &str = "worker.key";

/// Writes a new CA, a coordinator certificate for `hosts` and a worker client
/// certificate into `dir`; private keys are readable by their owner only. The CA's key
/// is not kept: nothing more can be signed with it.
pub fn write_all(dir: &std::path::Path, hosts: &[String]) -> std::io::Result<()> {
    let invalid = |err: rcgen::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, err);
    let authority = Authority::new("Heirloom local CA").map_err(invalid)?;
    let server = authority.server(&server_names(hosts)).map_err(invalid)?;
    let client = authority.client("heirloom-worker").map_err(invalid)?;
    std::fs::create_dir_all(dir)?;
    write(dir, CA_CERT, &authority.pem.certificate, false)?;
    write(dir, SERVER_CERT, &server.certificate, false)?;
    write(dir, SERVER_KEY, &server.key, true)?;
    write(dir, CLIENT_CERT, &client.certificate, false)?;
    write(dir, CLIENT_KEY, &client.key, true)?;
    Ok(())
}

/// The names the coordinator's certificate is valid for: the hosts asked for, and always
/// `localhost` and `127.0.0.1`, so that clients on the coordinator's own machine connect
/// whatever other names it has.
pub fn server_names(hosts: &[String]) -> Vec<String> {
    let mut names = hosts.to_vec();
    for local in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|name| name == local) {
            names.push(local.to_string());
        }
    }
    names
}

fn write(dir: &std::path::Path, name: &str, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(dir.join(name))?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_coordinator_s_certificate_always_names_this_machine() {
        let names = super::server_names(&["coordinator.example".into(), "10.0.0.5".into()]);
        assert_eq!(
            names,
            ["coordinator.example", "10.0.0.5", "localhost", "127.0.0.1"]
        );
        let local = super::server_names(&["127.0.0.1".into()]);
        assert_eq!(local, ["127.0.0.1", "localhost"]);
    }
}
