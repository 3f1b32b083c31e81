//! The one error type of the object store; callers branch on its cases.

use std::io;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error("object not found: {key}")]
    NotFound { key: String },

    /// A conditional write lost: the key exists (If-None-Match) or changed (If-Match).
    #[error("precondition failed for {key}: it exists or changed since it was read")]
    PreconditionFailed { key: String },

    /// The store refused the credentials (401/403): check the access key, secret and bucket
    /// policy. Retrying does not help.
    #[error("{op} {key}: access denied: {message}")]
    Auth { op: &'static str, key: String, message: String },

    #[error("{op} {key} failed")]
    Other {
        op: &'static str,
        key: String,
        #[source]
        source: BoxError,
        retryable: bool,
    },

    #[error("{op} {key}: i/o error")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },

    /// Client-side encryption refused the object (wrong key, damaged, not encrypted).
    #[error(transparent)]
    Crypt(#[from] super::encrypt::CryptError),

    #[error("invalid replica url: {0}")]
    InvalidUrl(String),

    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
}

impl ObjectStoreError {
    /// Whether the same request may succeed later: server errors (5xx, SlowDown), throttling
    /// (429), request timeouts (408), timeouts and connection failures. Other 4xx, bad input and
    /// lost conditions are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjectStoreError::Other { retryable, .. } => *retryable,
            ObjectStoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::BrokenPipe
            ),
            ObjectStoreError::NotFound { .. }
            | ObjectStoreError::PreconditionFailed { .. }
            | ObjectStoreError::Auth { .. }
            | ObjectStoreError::InvalidUrl(_)
            | ObjectStoreError::InvalidKey { .. }
            | ObjectStoreError::Crypt(_) => false,
        }
    }

    pub(crate) fn io(op: &'static str, key: &str, source: io::Error) -> ObjectStoreError {
        ObjectStoreError::Io { op, key: key.to_string(), source }
    }

    pub(crate) fn other(op: &'static str, key: &str, source: impl Into<BoxError>, retryable: bool) -> ObjectStoreError {
        ObjectStoreError::Other { op, key: key.to_string(), source: source.into(), retryable }
    }
}

/// Whether an HTTP status (with the S3 error code, when there is one) is worth retrying.
pub(crate) fn status_is_retryable(status: u16, code: Option<&str>) -> bool {
    let code_retryable = matches!(
        code,
        Some(
            "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "RequestTimeoutException"
                | "InternalError"
                | "ServiceUnavailable"
                | "ConditionalRequestConflict"
        )
    );
    status >= 500 || status == 408 || status == 429 || code_retryable
}
