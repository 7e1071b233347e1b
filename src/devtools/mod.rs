//! Tools beside the proxy, not part of it: the stand-in CV API ([`mock_api`]) that the demo,
//! the tests and the benches put behind cvgate, and the [`demo`] that replays the 4 May 2024
//! incident and its evasions through a real proxy. Behind the `devtools` cargo feature (on by
//! default, so `cargo run -- demo` works); a production build leaves them out with
//! `--no-default-features`, and the proxy's modules never import them.

pub mod demo;
pub mod mock_api;
