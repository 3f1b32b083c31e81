//! The wire contract between walfleet's agent and controller, and the validated domain types
//! both sides share. The gRPC services arrive with the controller; the domain types live here
//! now so that the agent and the controller name the same things the same way.

pub mod model;
