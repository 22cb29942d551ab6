//! Access control for Stowage: it sits between the listeners and the store.
//!
//! * [`tls`]: TLS for every listener (rustls), with certificate reload, optional client
//!   certificates and the identities they carry; the client side used to reach peers.
//! * [`net`]: the hardened accept loop shared by the HTTP and gRPC listeners: connection
//!   limits, handshake, header and idle timeouts, and the connection facts (address, client
//!   certificate identity) every request carries.
//! * [`token`]: bearer tokens as the Distribution token specification defines them: scopes,
//!   claims, issuing (the built-in token service) and verification (own and external issuers).
//! * [`password`]: argon2id password hashes, robot secrets, the htpasswd file, and a cache of
//!   recently verified credentials.
//! * [`challenge`]: `Authorization` header parsing and `WWW-Authenticate` challenges.
//! * [`guard`]: the cap on concurrent password checks and on refused logins per address.
//!
//! * [`authority`]: the one place that decides who a caller is and what it may do.
//!
//! This crate holds no account data of its own: it reads users, robots, roles and projects
//! through the [`Directory`] trait, which the daemon implements over the store.

pub mod authority;
pub mod challenge;
pub mod guard;
pub mod net;
pub mod password;
pub mod tls;
pub mod token;
