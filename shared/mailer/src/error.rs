//! Why a send failed, and whether the runtime should retry it or dead-letter it.
//!
//! | Failure                                                      | Variant                        | Class     |
//! |--------------------------------------------------------------|--------------------------------|-----------|
//! | SMTP reply 4xx (greylisting, mailbox busy, rate limit)       | `Rejected { code: 4xx }`       | transient |
//! | SMTP reply 5xx (no such user, policy refusal)                | `Rejected { code: 5xx }`       | permanent |
//! | SMTP 530/534/535/538 (authentication required or failed)     | `Rejected { code: 53x }`       | route     |
//! | connection refused / reset / DNS failure / network I/O       | `Connection`                   | transient |
//! | the send took longer than `SMTP_TIMEOUT_SECS`                | `Timeout`                      | transient |
//! | TLS handshake or certificate failure, STARTTLS not offered   | `Tls`                          | transient |
//! | malformed server reply, pool shut down, other client errors  | `Protocol`                     | transient |
//! | lettre refuses to build the message or parse an address     | `Invalid`                      | permanent |
//! | non-ASCII address to a server without SMTPUTF8               | `Invalid`                      | permanent |
//! | CR, LF or NUL in a header value (subject, display name)      | `HeaderInjection`              | permanent |
//! | file transport I/O error (disk full, permission)             | `File`                         | transient |
//!
//! "Route" failures are transient and open the circuit breaker ([`SendError::is_unavailable`]): an authentication
//! failure is the sending account's fault (a rotated password, a locked account), not the email's, and every email
//! would fail the same way until an operator fixes it, so dead-lettering each one would only move the outage into
//! the DLQ. The breaker's probe authenticates too, so it closes only once the credentials work again.
//!
//! TLS failures are transient because a restarting server or a rotating certificate looks the same as an attack
//! from here; either way the mailer never falls back to plaintext, so retrying is safe. Transient errors that never
//! clear still end in the dead-letter queue once the consumer's delivery limit is reached.
//!
//! The `Display` of every variant is safe to log: SMTP replies keep only the reply code and the enhanced status
//! (`550 5.1.1`) because the reply text often echoes the recipient address.

use std::error::Error as StdError;
use std::fmt;

/// A failed send, classified for retry ([`SendError::is_transient`]) or dead-letter ([`SendError::is_permanent`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The SMTP server answered with a negative reply.
    Rejected {
        /// The three-digit reply code: 4xx transient, 5xx permanent.
        code: u16,
        /// The RFC 3463 enhanced status (`5.1.1`), when the server sent one.
        enhanced: Option<String>,
    },
    /// The server could not be reached or the connection broke.
    Connection {
        /// The I/O or resolver error; never contains addresses.
        detail: String,
    },
    /// The whole send took longer than `SMTP_TIMEOUT_SECS`.
    Timeout,
    /// TLS could not be established; the mailer never continues without it.
    Tls {
        /// The TLS library's reason.
        detail: String,
    },
    /// The SMTP conversation failed without a reply code.
    Protocol {
        /// lettre's own description, or a fixed text when the server's bytes could echo an address.
        detail: String,
    },
    /// lettre refused the message or an address; sending it again cannot help.
    Invalid {
        /// lettre's reason; lettre's address and builder errors do not echo the input.
        reason: String,
    },
    /// A header value contained CR, LF or NUL and was refused rather than encoded.
    HeaderInjection {
        /// Which header.
        header: &'static str,
    },
    /// Writing the `.eml` file failed.
    File {
        /// The I/O error kind.
        kind: std::io::ErrorKind,
    },
}

impl SendError {
    /// The message may go through later: NAK it with a delay.
    pub fn is_transient(&self) -> bool {
        !self.is_permanent()
    }

    /// Whether the route to the server is broken (refused, timed out, TLS failed, `421` service not available,
    /// authentication required or refused), rather than this one email failing. The runtime's circuit breaker
    /// counts these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::Timeout | Self::Tls { .. } => true,
            Self::Rejected { code, .. } => *code == 421 || is_auth_failure(*code),
            _ => false,
        }
    }

    /// The message will never go through as it is: dead-letter it and stop redelivery.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Rejected { code, .. } => (500..600).contains(code) && !is_auth_failure(*code),
            Self::Invalid { .. } | Self::HeaderInjection { .. } => true,
            Self::Connection { .. }
            | Self::Timeout
            | Self::Tls { .. }
            | Self::Protocol { .. }
            | Self::File { .. } => false,
        }
    }

    /// The SMTP reply code, when the server sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A stable snake_case name for metrics, span fields and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "smtp_rejected",
            Self::Connection { .. } => "connection",
            Self::Timeout => "timeout",
            Self::Tls { .. } => "tls",
            Self::Protocol { .. } => "protocol",
            Self::Invalid { .. } => "invalid_message",
            Self::HeaderInjection { .. } => "header_injection",
            Self::File { .. } => "file_io",
        }
    }

    /// Maps a lettre SMTP error, dropping anything the server said beyond its codes.
    pub(crate) fn from_smtp(err: &lettre::transport::smtp::Error) -> Self {
        if let Some(code) = err.status() {
            let enhanced = err.source().and_then(|s| enhanced_status(&s.to_string()));
            return Self::Rejected {
                code: u16::from(code),
                enhanced,
            };
        }
        if err.is_timeout() {
            return Self::Timeout;
        }
        if err.is_tls() {
            return Self::Tls {
                detail: with_hint(source_text(err)),
            };
        }
        if err.is_response() {
            // The source may quote the server's bytes, which can contain an address.
            return Self::Protocol {
                detail: "malformed SMTP reply".to_owned(),
            };
        }
        if err.is_transport_shutdown() {
            return Self::Protocol {
                detail: "SMTP transport shut down".to_owned(),
            };
        }
        if err.is_client() {
            // Client errors carry lettre's own fixed texts, never server bytes.
            let detail = source_text(err);
            if detail.contains("SMTPUTF8") || detail.contains("8BITMIME") {
                return Self::Invalid { reason: detail };
            }
            if detail.contains("STARTTLS") || detail.contains("not encrypted") {
                return Self::Tls { detail };
            }
            return Self::Protocol { detail };
        }
        // Connection and network kinds. tokio-rustls reports handshake and certificate failures as an
        // `InvalidData` I/O error under lettre's connection kind; nothing else in connect produces that kind.
        match first_io_error(err) {
            Some(io) if io.kind() == std::io::ErrorKind::InvalidData => Self::Tls {
                detail: with_hint(io.to_string()),
            },
            Some(io) => Self::Connection {
                detail: io.to_string(),
            },
            None => Self::Connection {
                detail: source_text(err),
            },
        }
    }

    pub(crate) fn from_file(err: &lettre::transport::file::Error) -> Self {
        let kind = first_io_error(err).map_or(std::io::ErrorKind::Other, std::io::Error::kind);
        Self::File { kind }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                code,
                enhanced: Some(e),
            } => write!(f, "SMTP server replied {code} {e}"),
            Self::Rejected {
                code,
                enhanced: None,
            } => write!(f, "SMTP server replied {code}"),
            Self::Connection { detail } => write!(f, "SMTP connection failed: {detail}"),
            Self::Timeout => f.write_str("SMTP timed out"),
            Self::Tls { detail } => write!(f, "SMTP TLS failed: {detail}"),
            Self::Protocol { detail } => write!(f, "SMTP protocol error: {detail}"),
            Self::Invalid { reason } => write!(f, "message refused before sending: {reason}"),
            Self::HeaderInjection { header } => write!(f, "{header} header contains CR, LF or NUL"),
            Self::File { kind } => write!(f, "writing the .eml file failed: {kind}"),
        }
    }
}

impl StdError for SendError {}

impl From<lettre::error::Error> for SendError {
    fn from(err: lettre::error::Error) -> Self {
        Self::Invalid {
            reason: err.to_string(),
        }
    }
}

impl From<lettre::address::AddressError> for SendError {
    fn from(err: lettre::address::AddressError) -> Self {
        Self::Invalid {
            reason: err.to_string(),
        }
    }
}

/// 530 authentication required, 534 mechanism too weak, 535 credentials invalid, 538 encryption required for
/// the mechanism (RFC 4954): the account's configuration, the same for every email.
fn is_auth_failure(code: u16) -> bool {
    matches!(code, 530 | 534 | 535 | 538)
}

/// The RFC 3463 status at the start of a reply text (`5.1.1 <bob@…> unknown`), without the rest.
fn enhanced_status(text: &str) -> Option<String> {
    let token = text.split_whitespace().next()?;
    let mut parts = token.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && digits(subject, 3)
        && digits(detail, 3);
    ok.then(|| token.to_owned())
}

fn first_io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a std::io::Error> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = e.source();
    }
    None
}

/// `detail` with the setting to check, for the certificate failures whose rustls wording names none: an operator
/// reading "UnknownIssuer" in a dead letter should not have to know that the fix is a mailer variable.
fn with_hint(detail: String) -> String {
    let hint = if detail.contains("UnknownIssuer") {
        "the server's certificate is not signed by a public root or by a CA of SMTP_TLS_CA_FILE"
    } else if detail.contains("NotValidForName") {
        "the server's certificate does not name the host of SMTP_URL"
    } else {
        return detail;
    };
    format!("{detail} ({hint})")
}

pub(crate) fn source_text(err: &lettre::transport::smtp::Error) -> String {
    err.source()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_name_the_setting_to_check() {
        assert_eq!(
            with_hint("invalid peer certificate: UnknownIssuer".to_owned()),
            "invalid peer certificate: UnknownIssuer (the server's certificate is not signed by a public root \
             or by a CA of SMTP_TLS_CA_FILE)"
        );
        assert!(
            with_hint("invalid peer certificate: NotValidForName".to_owned())
                .ends_with("(the server's certificate does not name the host of SMTP_URL)")
        );
        assert_eq!(with_hint("handshake".to_owned()), "handshake");
    }

    #[test]
    fn classification_table() {
        use std::io::ErrorKind;
        let cases: Vec<(SendError, bool)> = vec![
            (
                SendError::Rejected {
                    code: 421,
                    enhanced: None,
                },
                true,
            ),
            (
                SendError::Rejected {
                    code: 451,
                    enhanced: Some("4.3.0".to_owned()),
                },
                true,
            ),
            (
                SendError::Rejected {
                    code: 550,
                    enhanced: Some("5.1.1".to_owned()),
                },
                false,
            ),
            (
                SendError::Rejected {
                    code: 554,
                    enhanced: None,
                },
                false,
            ),
            (
                SendError::Connection {
                    detail: "refused".to_owned(),
                },
                true,
            ),
            (SendError::Timeout, true),
            (
                SendError::Tls {
                    detail: "handshake".to_owned(),
                },
                true,
            ),
            (
                SendError::Protocol {
                    detail: "malformed SMTP reply".to_owned(),
                },
                true,
            ),
            (
                SendError::Invalid {
                    reason: "missing destination address".to_owned(),
                },
                false,
            ),
            (SendError::HeaderInjection { header: "Subject" }, false),
            (
                SendError::File {
                    kind: ErrorKind::StorageFull,
                },
                true,
            ),
        ];
        for (err, transient) in cases {
            assert_eq!(err.is_transient(), transient, "{err}");
            assert_eq!(err.is_permanent(), !transient, "{err}");
        }
    }

    #[test]
    fn authentication_failures_are_route_faults_not_permanent() {
        for code in [530, 534, 535, 538] {
            let err = SendError::Rejected {
                code,
                enhanced: Some("5.7.8".to_owned()),
            };
            assert!(err.is_unavailable(), "{err}");
            assert!(err.is_transient() && !err.is_permanent(), "{err}");
        }
        let no_user = SendError::Rejected {
            code: 550,
            enhanced: Some("5.1.1".to_owned()),
        };
        assert!(no_user.is_permanent() && !no_user.is_unavailable());
    }

    #[test]
    fn builder_and_address_errors_are_permanent() {
        let err = SendError::from(lettre::error::Error::MissingTo);
        assert!(err.is_permanent());
        let err = "not an address"
            .parse::<lettre::Address>()
            .map_err(SendError::from)
            .expect_err("invalid");
        assert!(err.is_permanent());
        assert!(!err.to_string().contains("not an address"));
    }

    #[test]
    fn code_is_exposed_only_for_replies() {
        assert_eq!(
            SendError::Rejected {
                code: 550,
                enhanced: None
            }
            .code(),
            Some(550)
        );
        assert_eq!(SendError::Timeout.code(), None);
    }

    #[test]
    fn enhanced_status_keeps_only_the_code() {
        assert_eq!(
            enhanced_status("5.1.1 <bob@example.com>: unknown user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("4.7.28 rate limited").as_deref(),
            Some("4.7.28")
        );
        assert_eq!(enhanced_status("<bob@example.com> unknown"), None);
        assert_eq!(enhanced_status("1.2.3 nope"), None);
        assert_eq!(enhanced_status(""), None);
    }
}
