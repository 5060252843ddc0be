//! Per-method authorization with gRFC A43 policies.
//!
//! [`model`] reads the JSON exactly as gRPC's own implementations do (unknown fields
//! refused), [`compile`] turns it into indexes so a decision does not scan every rule,
//! and [`layer`] enforces it per request as tower middleware, reading the current
//! policy on each call so that a swapped policy applies to live connections.

pub mod compile;
pub mod layer;
pub mod model;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use compile::{Decision, Policy};
pub use layer::AuthzLayer;
pub use model::PolicyError;

/// The policy in force, swappable without locking the request path.
pub type PolicyHandle = Arc<ArcSwap<Policy>>;

#[cfg(test)]
mod tests;
