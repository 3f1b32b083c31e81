//! The wire contract between walfleet's agent and controller (`walfleet/v1/*.proto`, generated
//! at build time) and the validated domain types both sides share. Receivers convert prost
//! messages into `model` types once, at the edge.

pub mod endpoint;
pub mod model;

/// Generated code for package `walfleet.v1`.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("walfleet.v1");
}
