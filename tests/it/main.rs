#![cfg(unix)]
//! Integration tests: real Unix sockets, real TLS handshakes with certificates made
//! in the test, a real tonic backend, and the gateway in-process or as a process.

mod cli;
mod client;
mod common;
mod examples;
mod identity;
mod lifecycle;
mod listeners;
mod mtls;
mod ops;
mod path;
mod policy;
mod proxy;
mod python;
mod relay;
mod robustness;
mod socket;
