//! The request/reply contracts of jetfn's NATS services (the micro protocol of `async_nats::service`), typed once
//! for both ends: the service that answers and every client that asks.
//!
//! Pure types, constants and functions, like the rest of this crate: the caller does the request, then hands the
//! reply's error headers and payload to [`decode_reply`].

pub mod index;

use serde::de::DeserializeOwned;

/// The header a service sets, with the numeric code, when it refuses a request.
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// The header a service sets, with the reason, when it refuses a request.
pub const ERROR_HEADER: &str = "Nats-Service-Error";

/// Request malformed or refused by the service (a bad query, a limit out of range).
pub const BAD_REQUEST: u16 = 400;
/// The service failed to answer (an index it could not read or write).
pub const INTERNAL: u16 = 500;

/// A refusal, as the service sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {status}")]
pub struct ServiceError {
    /// [`BAD_REQUEST`], [`INTERNAL`], or any code the service chose.
    pub code: u16,
    /// The service's reason.
    pub status: String,
}

/// Why a reply is not the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The service answered with an error code.
    #[error("the service refused ({0})")]
    Refused(ServiceError),
    /// The reply is neither an error nor the expected answer.
    #[error("the service's answer does not parse: {0}")]
    Malformed(String),
}

/// Reads a service's reply: its refusal when `header` (a lookup of the reply's headers) holds an error code,
/// otherwise the answer decoded from `payload`.
///
/// # Errors
/// [`ReplyError::Refused`] with the code and reason; [`ReplyError::Malformed`] when the code is not a number or
/// the payload is not an `R`.
pub fn decode_reply<'a, R: DeserializeOwned>(
    header: impl Fn(&str) -> Option<&'a str>,
    payload: &[u8],
) -> Result<R, ReplyError> {
    if let Some(code) = header(ERROR_CODE_HEADER) {
        let code = code.trim().parse().map_err(|_| {
            ReplyError::Malformed(format!("the error code {code:?} is not a number"))
        })?;
        let status = header(ERROR_HEADER).unwrap_or_default().to_owned();
        return Err(ReplyError::Refused(ServiceError { code, status }));
    }
    serde_json::from_slice(payload).map_err(|err| ReplyError::Malformed(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Answer {
        n: u32,
    }

    #[test]
    fn an_error_code_is_a_refusal_with_its_reason() {
        let headers = |name: &str| match name {
            ERROR_CODE_HEADER => Some("400"),
            ERROR_HEADER => Some("limit must be between 1 and 100"),
            _ => None,
        };
        let err = decode_reply::<Answer>(headers, b"").expect_err("refused");
        assert_eq!(
            err,
            ReplyError::Refused(ServiceError {
                code: BAD_REQUEST,
                status: "limit must be between 1 and 100".to_owned()
            })
        );
        assert_eq!(
            err.to_string(),
            "the service refused (400: limit must be between 1 and 100)"
        );
    }

    #[test]
    fn without_an_error_code_the_payload_is_the_answer() {
        let answer: Answer = decode_reply(|_| None, br#"{"n":3}"#).expect("an answer");
        assert_eq!(answer, Answer { n: 3 });
        let err = decode_reply::<Answer>(|_| None, b"{").expect_err("malformed");
        assert!(matches!(err, ReplyError::Malformed(_)), "{err:?}");
        let err = decode_reply::<Answer>(|name| (name == ERROR_CODE_HEADER).then_some("oops"), b"")
            .expect_err("malformed");
        assert!(err.to_string().contains("\"oops\""), "{err}");
    }
}
