//! Who may ask for what, and when: routes and their costs, the caller's identity and country,
//! blocks, closure windows. Everything the proxy decides before it reserves quota.

pub mod blocks;
pub mod closure;
pub mod geo;
pub mod guard;
pub mod identity;
pub mod masking;
pub mod probation;
pub mod route;
pub mod switches;
