//! gRPC services: prost messages are converted into validated `model` types once, here at the
//! edge, and every error becomes a `tonic::Status` in one place (`ApiError`). Internal errors
//! are logged, never sent to clients.

pub mod admin;
pub mod agent;

use proto::model::{DatabaseName, Generation, InstanceId, Position, ProjectName, Txid};
use tonic::Status;
use tracing::error;

use crate::auth::AuthError;
use crate::lease::LeaseError;
use crate::roots::RootError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Internal(e) => {
                error!(error = %format!("{e:#}"), "internal error");
                Status::internal("internal error (logged by the controller)")
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Missing | AuthError::Unknown | AuthError::Revoked(_) => ApiError::Unauthenticated(e.to_string()),
            AuthError::WrongKind { .. } | AuthError::WrongProject { .. } => ApiError::PermissionDenied(e.to_string()),
            AuthError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(e.to_string()),
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::OutOfRange { .. } => ApiError::InvalidArgument(e.to_string()),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> ApiError {
        match e {
            LeaseError::NotRegistered(_) => ApiError::FailedPrecondition(e.to_string()),
            LeaseError::WrongProject { .. } => ApiError::PermissionDenied(e.to_string()),
            LeaseError::NoDatabase { .. } => ApiError::NotFound(e.to_string()),
            LeaseError::Rollback(_) => ApiError::FailedPrecondition(e.to_string()),
            LeaseError::ReplicaRefused(r) => r.into(),
            LeaseError::Store(s) => s.into(),
        }
    }
}

impl From<crate::inventory::ReplicaError> for ApiError {
    fn from(e: crate::inventory::ReplicaError) -> ApiError {
        match e {
            crate::inventory::ReplicaError::Store(s) => s.into(),
            crate::inventory::ReplicaError::Refused(r) => r.into(),
        }
    }
}

impl From<RootError> for ApiError {
    fn from(e: RootError) -> ApiError {
        match e {
            RootError::TooLong { .. } | RootError::Invalid(_) | RootError::TooMany(_) => {
                ApiError::InvalidArgument(e.to_string())
            }
            RootError::NoRoots { .. } | RootError::Outside { .. } => ApiError::PermissionDenied(e.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The largest generation or transaction id a store can compare (2^63 - 1).
const MAX_NUMBER: u64 = i64::MAX as u64;

pub fn project(s: &str) -> ApiResult<ProjectName> {
    s.parse().map_err(|e: proto::model::NameError| ApiError::InvalidArgument(e.to_string()))
}

pub fn database(s: &str) -> ApiResult<DatabaseName> {
    s.parse().map_err(|e: proto::model::NameError| ApiError::InvalidArgument(e.to_string()))
}

pub fn instance(s: &str) -> ApiResult<InstanceId> {
    s.parse().map_err(|e: proto::model::NameError| ApiError::InvalidArgument(e.to_string()))
}

pub fn generation(g: u64) -> ApiResult<Generation> {
    if g == 0 {
        return Err(ApiError::InvalidArgument("generation 0 is not a generation".into()));
    }
    if g > MAX_NUMBER {
        return Err(ApiError::InvalidArgument(format!("generation {g} is larger than 2^63 - 1")));
    }
    Ok(Generation(g))
}

/// A position from the wire; None when absent (generation 0). Numbers past 2^63 - 1 are
/// refused: no store compares them.
pub fn position(p: Option<&proto::v1::Position>) -> ApiResult<Option<Position>> {
    let Some(p) = p.filter(|p| p.generation > 0) else { return Ok(None) };
    if p.generation > MAX_NUMBER || p.txid > MAX_NUMBER {
        return Err(ApiError::InvalidArgument(format!(
            "position (generation {}, transaction {}) is past 2^63 - 1",
            p.generation, p.txid
        )));
    }
    Ok(Some(Position { generation: Generation(p.generation), txid: Txid(p.txid) }))
}

/// A transaction id from the wire that the store compares.
pub fn txid(what: &str, t: u64) -> ApiResult<Txid> {
    if t > MAX_NUMBER {
        return Err(ApiError::InvalidArgument(format!("{what} {t} is larger than 2^63 - 1")));
    }
    Ok(Txid(t))
}

pub fn wire_position(p: Option<Position>) -> Option<proto::v1::Position> {
    p.map(|p| proto::v1::Position { generation: p.generation.0, txid: p.txid.0 })
}
