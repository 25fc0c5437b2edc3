//! Certificates made for one test with the `openssl` command: a CA, a server certificate for `127.0.0.1` and
//! `localhost` that it signed, a client certificate for mutual TLS, and a second CA that signed nothing the server
//! shows (to check that a client trusting the wrong CA is refused).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::nats::make_temp_dir;

/// PEM files in a temp dir of their own, removed on drop.
#[derive(Debug)]
pub struct TestCertificates {
    dir: PathBuf,
}

impl TestCertificates {
    /// Makes the files (EC P-256 keys, valid one day). Panics with the reason, naming `openssl` when it is
    /// missing.
    pub fn generate() -> Self {
        Self::try_generate().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::generate`], returning the reason.
    pub fn try_generate() -> Result<Self, Error> {
        let dir = make_temp_dir("tls")?;
        let certs = Self { dir };
        certs.make_ca("ca", "jetfn test CA")?;
        certs.make_ca("other-ca", "some other CA")?;
        certs.leaf(
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        certs.leaf("client", "jetfn-client", "extendedKeyUsage=clientAuth\n")?;
        Ok(certs)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed neither.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server's certificate (for `127.0.0.1` and `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The client certificate, for mutual TLS.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// The directory holding them all.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A nats-server `tls { }` block serving the server certificate; `verify` asks every client for a certificate
    /// the CA signed (mutual TLS).
    pub fn server_config(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}\n",
            self.server_cert(),
            self.server_key(),
            self.ca()
        )
    }

    fn make_ca(&self, name: &str, subject: &str) -> Result<(), Error> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={subject}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
        ])
    }

    fn leaf(&self, name: &str, common_name: &str, extensions: &str) -> Result<(), Error> {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .map_err(|e| Error::new(format!("writing {ext_file}: {e}")))?;
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}.pem"),
        ])
    }

    fn openssl(&self, args: &[&str]) -> Result<(), Error> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| {
                Error::new(format!(
                    "running openssl (install it: apt-get install openssl): {e}"
                ))
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
