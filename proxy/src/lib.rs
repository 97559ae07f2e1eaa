//! The TLS-terminating auth proxy for the Ollama API (`warden proxy`).
//!
//! Requests are made unambiguous before they are judged, and the canonical
//! request is what is forwarded:
//! - [`canon`]: the request target, read the way Ollama's router reads it;
//! - [`routes`]: Ollama's routes and who may call them (deny by default);
//! - [`body`]: the model a JSON body names and the generation-length cap, read
//!   the way Go's JSON decoder reads them.

pub mod audit;
pub mod body;
pub mod budget;
pub mod canon;
pub mod config;
pub mod content;
pub mod guard;
pub mod handler;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod relay;
pub mod report;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod workers;
