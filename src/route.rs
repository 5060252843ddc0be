//! Service name → backend. Exact names first, then the `*` default.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config;
use crate::metrics::{BackendLabels, Metrics};
use crate::proxy::Backend;

/// Routes compiled once per config; a lookup is one hash of the service name.
pub struct Router {
    /// foldhash (seeded per process): a client's service name is hashed on
    /// every call, and SipHash was most of the lookup.
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    default: Option<usize>,
    /// Every distinct backend, once; routes hold indices into it.
    backends: Vec<Arc<Backend>>,
}

impl Router {
    /// Builds one backend pool per distinct backend address, shared by all routes
    /// that name it.
    pub fn new(routes: &[config::Route], limits: &config::Limits, metrics: &Metrics) -> Router {
        let mut pools: Vec<Arc<Backend>> = Vec::new();
        let mut exact = HashMap::default();
        let mut default = None;
        for r in routes {
            let backend = match pools.iter().position(|b| *b.addr() == r.backend) {
                Some(i) => i,
                None => {
                    let latency = metrics
                        .upstream_seconds
                        .get_or_create_owned(&BackendLabels {
                            backend: r.backend.to_string(),
                        });
                    let b = Arc::new(Backend::new(
                        r.backend.clone(),
                        limits.backend_streams_per_connection,
                        latency,
                    ));
                    pools.push(b);
                    pools.len() - 1
                }
            };
            if r.service == "*" {
                default = Some(backend);
            } else {
                exact.insert(r.service.clone(), backend);
            }
        }
        Router {
            exact,
            default,
            backends: pools,
        }
    }

    pub fn route(&self, service: &str) -> Option<&Arc<Backend>> {
        self.route_index(service).map(|i| &self.backends[i])
    }

    /// The index (see [`Router::backend`]) of the service's backend.
    pub fn route_index(&self, service: &str) -> Option<usize> {
        self.exact.get(service).or(self.default.as_ref()).copied()
    }

    pub fn backend(&self, i: usize) -> Option<&Arc<Backend>> {
        self.backends.get(i)
    }
}

/// A route's `service` must be `*` or a full gRPC service name.
///
/// # Errors
/// Says what a service name looks like.
pub fn validate_service(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a gRPC service name (write the full name, e.g. \"demo.v1.Echo\", or \"*\" for the default route)"
        ))
    }
}
