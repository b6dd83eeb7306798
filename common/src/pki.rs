//! Cluster PKI: a self-signed cluster CA and per-node certificates signed by
//! it (DESIGN §3). `init_cluster` creates the CA and the first node
//! certificates, `issue_node` adds one later, and [`NodeIdentity`] loads what
//! one node presents (its chain and key) and trusts (the CA only). This module
//! also builds the rustls configurations every RPC path uses, always with the
//! ring provider passed explicitly, never a process-wide default.
//!
//! Files in a PKI directory: `ca.pem`, `ca.key` (mode 0600), and per node
//! `<name>.pem`, `<name>.key` (mode 0600). Node certificates carry CN = name,
//! SANs `tessera.cluster` (the SNI every client uses, see [`server_name`]),
//! `<name>`, `localhost` and `127.0.0.1`, and both server and client auth EKUs.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS server name every node certificate carries and every client asks for.
const CLUSTER_SERVER_NAME: &str = "tessera.cluster";
/// ALPN protocol spoken on both RPC paths (QUIC and the TCP data channel).
pub const ALPN_RPC: &[u8] = b"tessera-rpc/1";
const CA_VALIDITY_DAYS: i64 = 3650;
const NODE_VALIDITY_DAYS: i64 = 1825;
/// Certificates are valid from a little before their creation, to tolerate
/// clock skew between nodes.
const BACKDATE_HOURS: i64 = 1;

/// The TLS server name (SNI) clients use to reach any node; every node
/// certificate carries it as a DNS SAN.
pub fn server_name() -> &'static str {
    CLUSTER_SERVER_NAME
}

/// What one node presents (its certificate chain and key) and trusts (the
/// cluster CA).
#[derive(Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub ca: CertificateDer<'static>,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            name: self.name.clone(),
            ca: self.ca.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeIdentity {
    /// Loads `DIR/ca.pem`, `DIR/<name>.pem` and `DIR/<name>.key`.
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Self> {
        check_node_name(name)?;
        let ca = read_certs(&dir.join("ca.pem"))?
            .into_iter()
            .next()
            .with_context(|| format!("reading {}: no certificate in it", dir.join("ca.pem").display()))?;
        let cert_chain = read_certs(&dir.join(format!("{name}.pem")))?;
        let key = read_key(&dir.join(format!("{name}.key")))?;
        Ok(NodeIdentity {
            name: name.to_string(),
            ca,
            cert_chain,
            key,
        })
    }

    /// rustls client configuration: presents this node's certificate and
    /// trusts only the cluster CA. TLS 1.3 only (QUIC requires it).
    pub fn client_tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("enabling TLS 1.3")?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .with_context(|| format!("using the certificate of {}", self.name))?;
        config.alpn_protocols = vec![ALPN_RPC.to_vec()];
        Ok(config)
    }

    /// rustls server configuration: presents this node's certificate and
    /// requires a client certificate signed by the cluster CA.
    pub fn server_tls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = crypto_provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
            .build()
            .context("building the client certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("enabling TLS 1.3")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .with_context(|| format!("using the certificate of {}", self.name))?;
        config.alpn_protocols = vec![ALPN_RPC.to_vec()];
        Ok(config)
    }

    fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .context("adding the cluster CA as trust root")?;
        Ok(roots)
    }
}

/// The ring provider with AES-128-GCM preferred (the cheapest suite with
/// AES-NI, and the one QUIC needs for its initial packets anyway).
fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Common name of a DER certificate's subject, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Creates `DIR/ca.pem`, `DIR/ca.key` and, for each name, `DIR/<name>.pem`
/// and `DIR/<name>.key`. Refuses to overwrite an existing CA.
pub fn init_cluster(out: &Path, node_names: &[String]) -> anyhow::Result<()> {
    for name in node_names {
        check_node_name(name)?;
    }
    let ca_pem_path = out.join("ca.pem");
    if ca_pem_path.exists() {
        bail!(
            "{} already exists: refusing to overwrite the cluster CA",
            ca_pem_path.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .context("self-signing the CA certificate")?;
    write_private(&out.join("ca.key"), &ca_key.serialize_pem())?;
    write_public(&ca_pem_path, &ca_cert.pem())?;
    for name in node_names {
        issue_node(out, name)?;
    }
    Ok(())
}

/// Issues `DIR/<name>.pem` and `DIR/<name>.key` from the CA already in DIR.
pub fn issue_node(dir: &Path, name: &str) -> anyhow::Result<()> {
    check_node_name(name)?;
    let ca_pem = read_text(&dir.join("ca.pem"))?;
    let ca_key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?)
        .with_context(|| format!("reading {}: not a usable private key", ca_key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("reading {}: not a usable CA certificate", dir.join("ca.pem").display()))?;
    let node_key = KeyPair::generate().with_context(|| format!("generating the key of {name}"))?;
    let cert = node_params(name)?
        .signed_by(&node_key, &issuer)
        .with_context(|| format!("signing the certificate of {name}"))?;
    write_private(&dir.join(format!("{name}.key")), &node_key.serialize_pem())?;
    write_public(&dir.join(format!("{name}.pem")), &cert.pem())?;
    Ok(())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Tessera");
    params.distinguished_name.push(DnType::CommonName, "Tessera cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params
}

fn node_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut sans = vec![
        CLUSTER_SERVER_NAME.to_string(),
        name.to_string(),
        "localhost".to_string(),
    ];
    sans.dedup();
    let mut params = CertificateParams::new(sans).with_context(|| format!("{name:?} is not a valid DNS name"))?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Tessera");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, NODE_VALIDITY_DAYS);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(BACKDATE_HOURS);
    params.not_after = now + time::Duration::days(days);
}

fn random_serial() -> SerialNumber {
    // Positive 63-bit serials: unique enough for one cluster, never negative.
    let serial = rand::random::<u64>() >> 1;
    SerialNumber::from_slice(&serial.max(1).to_be_bytes())
}

/// Node names become file names and DNS SANs: keep them to `[A-Za-z0-9._-]`.
fn check_node_name(name: &str) -> anyhow::Result<()> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if name.is_empty() || name.len() > 63 || !valid_chars || name.starts_with('.') || name == "ca" {
        bail!("invalid node name {name:?}: use 1-63 of [A-Za-z0-9._-], not starting with '.', not \"ca\"");
    }
    Ok(())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}: bad PEM", path.display()))?;
    if certs.is_empty() {
        bail!("reading {}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("reading {}: bad PEM", path.display()))?
        .with_context(|| format!("reading {}: no private key in it", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a private key readable by its owner only (0600 from creation on).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        // An existing file keeps its old mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), &["ns1".to_string(), "cs-1".to_string()]).unwrap();
        issue_node(dir.path(), "gw1").unwrap();
        for name in ["ns1", "cs-1", "gw1"] {
            let id = NodeIdentity::load(dir.path(), name).unwrap();
            assert_eq!(common_name(&id.cert_chain[0]).as_deref(), Some(name));
            id.client_tls_config().unwrap();
            id.server_tls_config().unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "ns1.key", "gw1.key"] {
                let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn refuses_to_overwrite_ca_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), &[]).unwrap();
        let err = init_cluster(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err:#}");
        assert!(issue_node(dir.path(), "../evil").is_err());
        assert!(issue_node(dir.path(), "ca").is_err());
        let err = NodeIdentity::load(dir.path(), "missing").unwrap_err();
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    }

    #[test]
    fn node_certificate_verifies_against_its_ca_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init_cluster(a.path(), &["n1".to_string()]).unwrap();
        init_cluster(b.path(), &["n1".to_string()]).unwrap();
        let id_a = NodeIdentity::load(a.path(), "n1").unwrap();
        let id_b = NodeIdentity::load(b.path(), "n1").unwrap();
        let verifier = |ca: &CertificateDer<'static>| {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                .build()
                .unwrap()
        };
        let now = rustls_pki_types::UnixTime::now();
        let v = verifier(&id_a.ca);
        assert!(v.verify_client_cert(&id_a.cert_chain[0], &[], now).is_ok());
        assert!(v.verify_client_cert(&id_b.cert_chain[0], &[], now).is_err());
    }
}
