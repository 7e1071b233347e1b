//! The network edge: accepting connections, TLS, HTTP/1.1 and HTTP/2.

pub mod listener;
pub mod tls;
