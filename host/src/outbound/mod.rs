//! Outbound HTTP: which hosts an agent may reach. A request must be allowed by the agent's
//! manifest (`allowed-outbound-hosts`) and by the operator's list; neither widens the other.

pub mod pattern;

pub use pattern::{AllowList, Allowance, Host, HostPattern, PatternError, Scheme, Target};
