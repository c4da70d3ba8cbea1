//! Client of the Phoenix ranking service (`phoenix.ranking.v1.RankingService`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), phoenix_client::ClientError> {
//! use phoenix_client::{ClientConfig, PhoenixClient, pb};
//! // "host:port" as the Python client takes it; "http://host:port" works too.
//! let client = PhoenixClient::connect("127.0.0.1:50051", ClientConfig::default()).await?;
//! let candidates = vec![pb::Candidate { post_id: 7, author_id: 3, product_surface: 0 }];
//! let ranked = client.rank(42, &[], &candidates).await?;
//! println!("{:?}", ranked[0].scores.favorite_score);
//! # Ok(()) }
//! ```
//!
//! TLS: an `https://` target is verified with the system's roots; [`ClientConfig::tls`] (a
//! [`TlsConfig`]: CA, client certificate for mutual TLS, server name) gives TLS over any target.
//!
//! ```no_run
//! # async fn demo() -> Result<(), phoenix_client::ClientError> {
//! use phoenix_client::{ClientConfig, PhoenixClient, TlsConfig};
//! let config = ClientConfig {
//!     tls: Some(TlsConfig {
//!         ca: Some("ca.pem".into()),
//!         cert: Some("client.pem".into()), // mutual TLS: this client's certificate and key
//!         key: Some("client.key".into()),
//!         ..TlsConfig::default()
//!     }),
//!     ..ClientConfig::default()
//! };
//! let client = PhoenixClient::connect("https://ranker.internal:50051", config).await?;
//! # Ok(()) }
//! ```
//!
//! * [`client`]: targets in the Python client's `host:port` form or as URIs
//!   ([`normalize_target`]), connection with a timeout, TLS and mutual TLS, per-call deadlines,
//!   jittered retries on `UNAVAILABLE` / `RESOURCE_EXHAUSTED` only (not on a message size
//!   limit, see [`RetryPolicy`]), one reused HTTP/2 channel.
//! * [`scores`]: per-candidate [`PhoenixScores`] mapped by the action names the server reports,
//!   and the home-mixer's weighted score.
//! * [`synthetic`]: deterministic synthetic requests for examples and load tests, the same as
//!   Python's `request/synthetic.py` makes for the same seed.
//! * [`xai_request`] and [`PhoenixClient::predict_next_actions`]: the same requests in xAI's
//!   `xai.recsys.v1.RecsysPredictor` contract, as xAI's home-mixer sends them, which the server
//!   serves beside `Rank` (docs/xai-compat.md).

pub mod client;
pub mod flags;
pub mod scores;
pub mod synthetic;

/// Generated from `proto/phoenix/ranking/v1/ranking.proto` at build time.
pub mod pb {
    tonic::include_proto!("phoenix.ranking.v1");
}

/// Generated from `proto/xai/recsys/v1/recsys.proto` (our subset of xAI's contract, what xAI's
/// home-mixer sends) at build time.
pub mod xai {
    tonic::include_proto!("xai.recsys.v1");
}

pub use client::{
    channel, channel_with_tls, columnar, normalize_target, xai_request, ClientConfig, ClientError,
    PhoenixClient, RetryPolicy, ScoredCandidate, TlsConfig,
};
pub use flags::TlsFlags;
pub use scores::{PhoenixScores, Weights, ACTIONS, XAI_ACTIONS};
