//! Client of the Phoenix ranking service (`phoenix.ranking.v1.RankingService`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), phoenix_client::ClientError> {
//! use phoenix_client::{ClientConfig, PhoenixClient, pb};
//! let client = PhoenixClient::connect("http://127.0.0.1:50051", ClientConfig::default()).await?;
//! let candidates = vec![pb::Candidate { post_id: 7, author_id: 3, product_surface: 0 }];
//! let ranked = client.rank(42, &[], &candidates).await?;
//! println!("{:?}", ranked[0].scores.favorite_score);
//! # Ok(()) }
//! ```
//!
//! * [`client`]: connection with a timeout, per-call deadlines, jittered retries on
//!   `UNAVAILABLE` / `RESOURCE_EXHAUSTED` only, one reused HTTP/2 channel.
//! * [`scores`]: per-candidate [`PhoenixScores`] mapped by the action names the server reports,
//!   and the home-mixer's weighted score.
//! * [`synthetic`]: deterministic synthetic users and candidates for examples and load tests.

pub mod client;
pub mod scores;
pub mod synthetic;

/// Generated from `proto/phoenix/ranking/v1/ranking.proto` at build time.
pub mod pb {
    tonic::include_proto!("phoenix.ranking.v1");
}

pub use client::{ClientConfig, ClientError, PhoenixClient, RetryPolicy, ScoredCandidate};
pub use scores::{PhoenixScores, Weights};
