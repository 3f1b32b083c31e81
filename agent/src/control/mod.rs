//! The agent's side of the control plane (fencing, after Neon's storage controller): register
//! once per process, acquire a lease per database before touching it, renew at a third of the
//! TTL (each renew is also the database's report), hand over or release on the way out.
//!
//! Safety does not rest on the lease alone: every object key carries the writer's generation,
//! which the controller issues, so an instance that lost its lease can only ever write a fork.
//! The lease decides who may tell the app that a commit is durable (`/durable`) and who gets to
//! write the lineage everyone restores from.

mod client;
mod commands;
mod lease;
mod retention;

pub use client::{human, Control, ControlError, Mode, RenewOutcome};
pub use commands::{Command, CommandStream, Handoff, Handoffs, Rollback};
pub use lease::{
    at_head, confirmed_until, local_position, margin, report, Lease, LeaseKeeper, LeaseKind, LeaseState, LeaseStatus,
};
pub use retention::RetentionKeeper;

#[cfg(test)]
mod tests;
