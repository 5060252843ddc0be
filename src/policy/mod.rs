//! Per-method authorization with gRFC A43 policies.
//!
//! [`model`] reads the JSON exactly as gRPC's own implementations do (unknown fields
//! refused), [`compile`] turns it into indexes so a decision does not scan every rule,
//! and [`layer`] enforces it per request as tower middleware, reading the current
//! policy on each call so that a swapped policy applies to live connections.

pub mod compile;
pub mod layer;
pub mod model;
pub mod pattern;
pub mod rule;

pub use compile::{Decision, Explanation, LoadContext, Policy};
pub use layer::{Authorizer, AuthzLayer};
pub use model::PolicyError;

#[cfg(test)]
mod tests;
