//! Mailer settings, read once from the environment.

use std::path::PathBuf;

use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer};

/// `SMTP_URL` carries the SMTP password: the runtime's secret type, which prints `***`.
pub use runtime::config::Secret;
use runtime::config::{Settings, Table, Var};

/// Where and how email goes, from environment variables (no prefix).
///
/// Without `SMTP_URL` every email is written to `MAIL_DIR` as an `.eml` file, so a laptop or a CI run needs no mail
/// server and nothing leaves the machine by accident.
#[derive(Debug, Clone, Deserialize)]
pub struct MailerConfig {
    /// `SMTP_URL` (unset: write `.eml` files). lettre URL form: `smtps://user:pass@host` (implicit TLS, port 465) or
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS required) in production; `smtp://127.0.0.1:2525` (no TLS)
    /// only for a local test server. An empty value counts as unset.
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub smtp_url: Option<Secret>,
    /// `SMTP_TLS_CA_FILE` (unset: the public roots only): PEM certificates trusted, besides the public roots, to
    /// verify the SMTP server's certificate, so a relay behind a private CA keeps TLS on instead of having it
    /// turned off to send at all. Read and checked by [`Mailer::new`](crate::Mailer::new), at start-up. An empty
    /// value counts as unset.
    #[serde(default, deserialize_with = "non_empty_path")]
    pub smtp_tls_ca_file: Option<PathBuf>,
    /// `SMTP_TIMEOUT_SECS` (default 30): limit for one whole send (connect, TLS, every command, the data); a timeout is
    /// transient. A timeout after the data went out may still have delivered the email; the stable Message-ID lets
    /// receiving systems collapse the retry.
    #[serde(default = "default_timeout_secs")]
    pub smtp_timeout_secs: u64,
    /// `SMTP_POOL_MAX` (default 8): most SMTP connections, and so emails in flight, this process has open at once.
    #[serde(default = "default_pool_max")]
    pub smtp_pool_max: u32,
    /// `MAIL_DIR` (default `.jetfn/mail`): where `.eml` files go when `SMTP_URL` is unset; created if missing.
    #[serde(default = "default_mail_dir")]
    pub mail_dir: PathBuf,
    /// `MAIL_FROM` (default `jetfn <no-reply@jetfn.local>`): the `From` of every email.
    #[serde(default = "default_mail_from", deserialize_with = "mailbox")]
    pub mail_from: Mailbox,
}

impl Default for MailerConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            smtp_tls_ca_file: None,
            smtp_timeout_secs: default_timeout_secs(),
            smtp_pool_max: default_pool_max(),
            mail_dir: default_mail_dir(),
            mail_from: default_mail_from(),
        }
    }
}

impl MailerConfig {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// A value that does not parse; the message names the variable and never shows `SMTP_URL`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let config: Self = runtime::config::from_env()?;
        config.check()?;
        Ok(config)
    }

    #[cfg(test)]
    pub(crate) fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Self = runtime::config::from_vars(vars)?;
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.smtp_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                var: "SMTP_TIMEOUT_SECS",
                reason: "must be at least 1",
            });
        }
        if self.smtp_pool_max == 0 {
            return Err(ConfigError::Invalid {
                var: "SMTP_POOL_MAX",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }

    /// The certificates of `SMTP_TLS_CA_FILE` (none when unset), each checked as rustls will use it: a file that
    /// cannot be read, holds no certificate or one rustls refuses stops the process at start-up rather than fail
    /// every TLS handshake later.
    ///
    /// # Errors
    /// [`ConfigError::CaFile`], naming the file and why.
    pub(crate) fn extra_roots(&self) -> Result<Vec<Certificate>, ConfigError> {
        let Some(path) = &self.smtp_tls_ca_file else {
            return Ok(Vec::new());
        };
        let invalid = |reason: String| ConfigError::CaFile { reason };
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path:?}: {e}")))?;
        let ders = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("{path:?} is not valid PEM: {e}")))?;
        if ders.is_empty() {
            return Err(invalid(format!(
                "{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )));
        }
        let count = ders.len();
        ders.into_iter()
            .enumerate()
            .map(|(i, der)| {
                let bad = |e: lettre::transport::smtp::Error| {
                    invalid(format!(
                        "certificate {} of {count} in {path:?} cannot be a trusted root: {}",
                        i + 1,
                        crate::error::source_text(&e)
                    ))
                };
                let cert = Certificate::from_der(der.to_vec()).map_err(bad)?;
                // lettre parses a certificate only when it builds the TLS parameters: build them once now.
                TlsParameters::builder("localhost".to_owned())
                    .add_root_certificate(cert.clone())
                    .build()
                    .map_err(bad)?;
                Ok(cert)
            })
            .collect()
    }
}

/// A setting that cannot work; the process should stop at start-up rather than fail every email later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable is missing or does not parse (the error names it).
    #[error(transparent)]
    Env(#[from] runtime::config::ConfigError),
    /// A variable parsed but its value is out of range.
    #[error("{var}: {reason}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// lettre rejected `SMTP_URL`; the reason comes from URL parsing and never contains the password.
    #[error("SMTP_URL is not a usable SMTP URL: {reason}")]
    SmtpUrl {
        /// Why lettre rejected it.
        reason: String,
    },
    /// `SMTP_TLS_CA_FILE` cannot be read or holds no certificate rustls can trust.
    #[error("SMTP_TLS_CA_FILE: {reason}")]
    CaFile {
        /// Which file, and what is wrong with it.
        reason: String,
    },
    /// `MAIL_DIR` could not be created.
    #[error("MAIL_DIR {path:?} cannot be created")]
    MailDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pooled SMTP transport spawns its idle-connection reaper, which needs a Tokio runtime.
    #[error("Mailer::new must be called inside a Tokio runtime when SMTP_URL is set")]
    NoRuntime,
}

/// The variables of [`MailerConfig`].
pub const MAILER: Table = Table {
    title: "Email",
    prefix: "",
    vars: &[
        Var::optional(
            "SMTP_URL",
            "the SMTP server, e.g. `smtps://user:pass@host` or `smtp://user:pass@host:587?tls=required`; \
             unset or empty: write .eml files to MAIL_DIR",
        )
        .secret(),
        Var::optional(
            "SMTP_TLS_CA_FILE",
            "PEM file of one or more CA certificates trusted, besides the public roots, to verify the SMTP \
             server (a relay with a private CA); unset: the public roots only",
        ),
        Var::with_default(
            "SMTP_TIMEOUT_SECS",
            "30",
            "limit for one whole send; a timeout is transient",
        ),
        Var::with_default(
            "SMTP_POOL_MAX",
            "8",
            "most SMTP connections (emails in flight) this process has open at once",
        ),
        Var::with_default(
            "MAIL_DIR",
            ".jetfn/mail",
            "where .eml files go when SMTP_URL is unset; created if missing",
        ),
        Var::with_default(
            "MAIL_FROM",
            "jetfn <no-reply@jetfn.local>",
            "the From of every email",
        ),
    ],
};

impl Settings for MailerConfig {
    const TABLE: &'static Table = &MAILER;
}

/// Every variable an email function served by [`serve`](crate::serve) reads, for its `--help`: the connection,
/// consuming, email, and logs and traces.
pub const SETTINGS: [&Table; 4] = [
    &runtime::config::NATS,
    &runtime::config::JOB,
    &MAILER,
    &runtime::config::TELEMETRY,
];

/// The addresses of a comma-separated setting such as `ORDER_ADMIN_TO`; blanks around and between entries are
/// ignored, so an empty value is an empty list.
///
/// # Errors
/// An entry that is not an address, named by `variable` and masked (the value is personal data).
pub fn mailboxes(variable: &str, list: &str) -> anyhow::Result<Vec<Mailbox>> {
    use anyhow::Context as _;
    list.split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            address.parse::<Mailbox>().with_context(|| {
                format!(
                    "{variable} holds an invalid address: {}",
                    events::pii::mask_email(address)
                )
            })
        })
        .collect()
}

/// [`SETTINGS`] after the function's own table, for the `--help` of an email function with settings of its own.
pub const fn settings_with(own: &'static Table) -> [&'static Table; 5] {
    let [nats, job, mailer, telemetry] = SETTINGS;
    [own, nats, job, mailer, telemetry]
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_pool_max() -> u32 {
    8
}

fn default_mail_dir() -> PathBuf {
    PathBuf::from(".jetfn/mail")
}

fn default_mail_from() -> Mailbox {
    Mailbox::new(
        Some("jetfn".to_owned()),
        lettre::Address::new("no-reply", "jetfn.local")
            .expect("a constant, valid address; covered by a unit test"),
    )
}

fn non_empty_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.trim().is_empty()).map(Secret::new))
}

fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.trim().is_empty()).map(PathBuf::from))
}

fn mailbox<'de, D: Deserializer<'de>>(d: D) -> Result<Mailbox, D::Error> {
    let value = String::deserialize(d)?;
    if value.contains(['\r', '\n', '\0']) {
        return Err(serde::de::Error::custom("contains CR, LF or NUL"));
    }
    value.parse().map_err(|e| {
        serde::de::Error::custom(format_args!(
            "expected a mailbox like `Name <user@example.com>` ({e})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = MailerConfig::from_vars(vars(&[])).expect("defaults");
        assert!(c.smtp_url.is_none());
        assert_eq!(c.smtp_timeout_secs, 30);
        assert_eq!(c.smtp_pool_max, 8);
        assert_eq!(c.mail_dir, PathBuf::from(".jetfn/mail"));
        assert_eq!(c.mail_from.to_string(), "jetfn <no-reply@jetfn.local>");
        assert_eq!(c.mail_from, MailerConfig::default().mail_from);
    }

    #[test]
    fn reads_every_variable() {
        let c = MailerConfig::from_vars(vars(&[
            ("SMTP_URL", "smtps://u:hunter2@mail.example.com"),
            ("SMTP_TLS_CA_FILE", "/etc/jetfn/smtp-ca.pem"),
            ("SMTP_TIMEOUT_SECS", "5"),
            ("SMTP_POOL_MAX", "2"),
            ("MAIL_DIR", "/tmp/x"),
            ("MAIL_FROM", "Shop <shop@example.com>"),
        ]))
        .expect("valid");
        assert_eq!(
            c.smtp_url.as_ref().map(Secret::expose),
            Some("smtps://u:hunter2@mail.example.com")
        );
        assert_eq!(
            c.smtp_tls_ca_file,
            Some(PathBuf::from("/etc/jetfn/smtp-ca.pem"))
        );
        assert_eq!(c.smtp_timeout_secs, 5);
        assert_eq!(c.smtp_pool_max, 2);
        assert_eq!(c.mail_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.mail_from.email.to_string(), "shop@example.com");
    }

    #[test]
    fn debug_never_shows_the_smtp_password() {
        let c =
            MailerConfig::from_vars(vars(&[("SMTP_URL", "smtps://u:hunter2@mail.example.com")]))
                .expect("valid");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn empty_smtp_url_means_file_transport() {
        let c = MailerConfig::from_vars(vars(&[("SMTP_URL", "")])).expect("valid");
        assert!(c.smtp_url.is_none());
    }

    #[test]
    fn the_tls_ca_file_holds_one_or_more_certificates_checked_at_start_up() {
        let certs = testkit::TestCertificates::generate();
        let file = |name: &str, text: &str| {
            let path = certs.dir().join(name);
            std::fs::write(&path, text).expect("write");
            path.to_string_lossy().into_owned()
        };
        let read = |path: &Path| std::fs::read_to_string(path).expect("read");
        let roots = |path: &str| {
            MailerConfig::from_vars(vars(&[("SMTP_TLS_CA_FILE", path)]))
                .expect("a path parses")
                .extra_roots()
        };

        let one = certs.ca().to_string_lossy().into_owned();
        assert_eq!(roots(&one).expect("the test CA").len(), 1);
        let bundle = file(
            "bundle.pem",
            &format!("{}{}", read(&certs.ca()), read(&certs.other_ca())),
        );
        assert_eq!(roots(&bundle).expect("two CAs").len(), 2);
        let unset = MailerConfig::from_vars(vars(&[("SMTP_TLS_CA_FILE", " ")])).expect("valid");
        assert_eq!(unset.smtp_tls_ca_file, None, "empty counts as unset");
        assert!(unset.extra_roots().expect("none").is_empty());

        let err = |path: &str| roots(path).expect_err(path).to_string();
        let missing = err("/nonexistent/smtp-ca.pem");
        assert!(
            missing.starts_with(r#"SMTP_TLS_CA_FILE: cannot read "/nonexistent/smtp-ca.pem": "#),
            "{missing}"
        );
        let key = certs.server_key().to_string_lossy().into_owned();
        assert_eq!(
            err(&key),
            format!(
                "SMTP_TLS_CA_FILE: {key:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )
        );
        let junk = file(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        let refused = err(&junk);
        assert!(
            refused.starts_with(&format!(
                "SMTP_TLS_CA_FILE: certificate 1 of 1 in {junk:?} cannot be a trusted root: "
            )),
            "{refused}"
        );
    }

    #[test]
    fn bad_mail_from_names_the_variable() {
        let err =
            MailerConfig::from_vars(vars(&[("MAIL_FROM", "not a mailbox")])).expect_err("invalid");
        assert!(err.to_string().contains("MAIL_FROM"), "{err}");
    }

    #[test]
    fn the_table_lists_every_field_with_its_real_default() {
        runtime::config::check_table::<MailerConfig>(&[]);
    }

    #[test]
    fn errors_name_the_variable_and_never_show_the_smtp_url() {
        let err = MailerConfig::from_vars(vars(&[("SMTP_POOL_MAX", "many")])).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            r#"SMTP_POOL_MAX: expected a whole number, got "many""#
        );
        let err = MailerConfig::from_vars(vars(&[("MAIL_FROM", "not a mailbox")]))
            .expect_err("invalid")
            .to_string();
        assert!(err.starts_with("MAIL_FROM: expected a mailbox"), "{err}");
        assert!(err.ends_with(r#", got "not a mailbox""#), "{err}");
        assert_eq!(Secret::new("smtps://u:hunter2@h").to_string(), "***");
    }

    #[test]
    fn the_smtp_url_can_come_from_a_mounted_secret_file() {
        let path = std::env::temp_dir().join(format!("jetfn-smtp-url-{}", std::process::id()));
        std::fs::write(&path, "smtps://u:hunter2@mail.example.com\n").unwrap();
        let file = path.to_string_lossy().into_owned();
        let c = MailerConfig::from_vars(vars(&[("SMTP_URL_FILE", &file)])).expect("valid");
        assert_eq!(
            c.smtp_url.as_ref().map(Secret::expose),
            Some("smtps://u:hunter2@mail.example.com")
        );
        let err = MailerConfig::from_vars(vars(&[
            ("SMTP_URL_FILE", &file),
            ("SMTP_URL", "smtps://u:hunter2@mail.example.com"),
        ]))
        .expect_err("both set")
        .to_string();
        assert_eq!(
            err,
            "SMTP_URL: is set and so is SMTP_URL_FILE; set only one"
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let err = MailerConfig::from_vars(vars(&[("SMTP_POOL_MAX", "0")])).expect_err("invalid");
        assert!(err.to_string().contains("SMTP_POOL_MAX"), "{err}");
        let err =
            MailerConfig::from_vars(vars(&[("SMTP_TIMEOUT_SECS", "soon")])).expect_err("invalid");
        assert!(err.to_string().contains("SMTP_TIMEOUT_SECS"), "{err}");
    }

    #[test]
    fn mailboxes_skip_blanks_and_name_the_variable_of_a_bad_entry() {
        let list = super::mailboxes(
            "ORDER_ADMIN_TO",
            " ops@shop.example, ,Boss <boss@shop.example>,",
        )
        .expect("two addresses");
        let emails: Vec<String> = list.iter().map(|to| to.email.to_string()).collect();
        assert_eq!(emails, ["ops@shop.example", "boss@shop.example"]);
        assert!(
            super::mailboxes("ORDER_ADMIN_TO", " , ")
                .expect("empty")
                .is_empty()
        );
        let err = super::mailboxes("CONTACT_SUPPORT_TO", "ops@shop.example,support at shop")
            .expect_err("not an address");
        assert_eq!(
            err.to_string(),
            "CONTACT_SUPPORT_TO holds an invalid address: ***",
            "a value that is no address is masked whole"
        );
    }
}
