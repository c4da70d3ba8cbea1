//! Ranks a synthetic user's candidates against a running server and prints them sorted.
//!
//!     rank [--target http://127.0.0.1:50051] [--candidates 12] [--history 30] [--seed 7]

use phoenix_client::{synthetic, ClientConfig, PhoenixClient};

fn flag(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = flag("--target", "http://127.0.0.1:50051");
    let candidates: usize = flag("--candidates", "12").parse()?;
    let history: usize = flag("--history", "30").parse()?;
    let seed: u64 = flag("--seed", "7").parse()?;

    let client = PhoenixClient::connect(&target, ClientConfig::default()).await?;
    let info = client.model_info();
    let request = synthetic::request(seed, history, candidates);
    let mut ranked = client
        .rank(request.user_id, &request.history, &request.candidates)
        .await?;
    ranked.sort_by(|a, b| b.weighted_score.total_cmp(&a.weighted_score));

    println!(
        "{target}: model {} ({} layers, emb {}), user {}, {} history events, {} candidates",
        info.model_version, info.num_layers, info.emb_size, request.user_id, history, candidates
    );
    println!(
        "{:>4}  {:>20}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
        "rank", "post_id", "author_id", "score", "favorite", "reply", "repost", "not_int", "report"
    );
    let p = |v: Option<f64>| v.unwrap_or(f64::NAN);
    for (i, c) in ranked.iter().enumerate() {
        let s = &c.scores;
        println!(
            "{:>4}  {:>20}  {:>9}  {:>8.3}  {:>8.4}  {:>8.4}  {:>8.4}  {:>8.4}  {:>8.4}",
            i + 1,
            c.post_id,
            c.author_id,
            c.weighted_score,
            p(s.favorite_score),
            p(s.reply_score),
            p(s.repost_score),
            p(s.not_interested_score),
            p(s.report_score)
        );
    }
    Ok(())
}
