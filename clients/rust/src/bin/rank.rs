//! Ranks a synthetic user's candidates against a running server and prints them sorted, or
//! (`--print-request`) prints the synthetic request as JSON without contacting a server, or
//! (`--print-weights`, `--print-xai-actions`) the default ranking weights, or our actions'
//! xAI `ActionName`s, as JSON.
//!
//!     rank [--target 127.0.0.1:50051] [--candidates 12] [--history N] [--seed 7] [--surfaces N]
//!          [--tls-ca PATH] [--tls-cert PATH --tls-key PATH] [--tls-server-name NAME]
//!     rank --print-request [--history 64] [--candidates 12] [--seed 7] [--surfaces 16]
//!     rank --print-weights
//!     rank --print-xai-actions

use std::process::ExitCode;

use clap::Parser;
use phoenix_client::{synthetic, ClientConfig, PhoenixClient, TlsFlags, Weights, XAI_ACTIONS};

/// History events of `--print-request` when `--history` is not given (no server to ask).
const OFFLINE_HISTORY: usize = 64;
/// Product surfaces of `--print-request` when `--surfaces` is not given (no server to ask).
const OFFLINE_SURFACES: u32 = 16;

/// Rank a synthetic user's candidates with a Phoenix ranking server and print them sorted by the
/// home-mixer's weighted score.
///
/// The request is the synthetic request of `--seed` (the same one Python's
/// `request.synthetic.synthetic_request_dict` makes). With `--print-request`, print that request
/// as one JSON object instead and exit without contacting a server.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server: host:port, [::1]:port, http://host:port or https://host:port (TLS)
    #[arg(long, env = "PHOENIX_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,

    #[command(flatten)]
    tls: TlsFlags,

    /// Candidates to rank
    #[arg(long, default_value_t = 12)]
    candidates: usize,

    /// History events [default: the model's history_seq_len from the server's ModelInfo;
    /// 64 with --print-request]
    #[arg(long)]
    history: Option<usize>,

    /// Which synthetic user, history and candidates
    #[arg(long, default_value_t = 7)]
    seed: u64,

    /// Product surfaces are drawn from [0, SURFACES) [default: the model's
    /// product_surface_vocab_size from the server's ModelInfo; 16 with --print-request]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    surfaces: Option<u32>,

    /// Print the synthetic request as one JSON object (ids as integers, actions by name) and
    /// exit without contacting a server; --history then defaults to 64 and --surfaces to 16
    #[arg(long)]
    print_request: bool,

    /// Print the default ranking weights as one JSON object (action name -> weight) and exit
    #[arg(long)]
    print_weights: bool,

    /// Print our actions' xAI ActionName names as one JSON object and exit
    #[arg(long)]
    print_xai_actions: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_weights {
        let weights: serde_json::Map<String, serde_json::Value> = Weights::default()
            .0
            .into_iter()
            .map(|(name, weight)| (name, weight.into()))
            .collect();
        println!("{}", serde_json::Value::Object(weights));
        return ExitCode::SUCCESS;
    }
    if args.print_xai_actions {
        let names: serde_json::Map<String, serde_json::Value> = XAI_ACTIONS
            .iter()
            .map(|(ours, theirs)| (ours.to_string(), theirs.as_str_name().into()))
            .collect();
        println!("{}", serde_json::Value::Object(names));
        return ExitCode::SUCCESS;
    }
    if args.print_request {
        let request = synthetic::request(
            args.seed,
            args.history.unwrap_or(OFFLINE_HISTORY),
            args.candidates,
            args.surfaces.unwrap_or(OFFLINE_SURFACES),
        );
        println!("{}", synthetic::request_json(&request));
        return ExitCode::SUCCESS;
    }
    match rank(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rank: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn rank(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = ClientConfig {
        tls: args.tls.config(),
        ..ClientConfig::default()
    };
    let client = PhoenixClient::connect(&args.target, config).await?;
    let info = client.model_info();
    let history = args.history.unwrap_or(info.history_seq_len as usize);
    let surfaces = match args.surfaces.unwrap_or(info.product_surface_vocab_size) {
        0 => return Err("the server reports product_surface_vocab_size 0; pass --surfaces".into()),
        n => n,
    };
    let request = synthetic::request(args.seed, history, args.candidates, surfaces);
    let mut ranked = client
        .rank(request.user_id, &request.history, &request.candidates)
        .await?;
    ranked.sort_by(|a, b| b.weighted_score.total_cmp(&a.weighted_score));

    println!(
        "{}: model {} ({} layers, emb {}), user {}, {} history events, {} candidates",
        args.target,
        info.model_version,
        info.num_layers,
        info.emb_size,
        request.user_id,
        history,
        args.candidates
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_keep_their_defaults() {
        let args = Args::try_parse_from(["rank"]).unwrap();
        assert_eq!((args.candidates, args.seed), (12, 7));
        assert_eq!((args.history, args.surfaces), (None, None));
        assert!(!args.print_request);
        assert!(Args::try_parse_from(["rank", "--surfaces", "0"]).is_err());
    }

    #[test]
    fn tls_flags_make_the_tls_config() {
        let args = Args::try_parse_from(["rank"]).unwrap();
        assert_eq!(args.tls.config(), None);
        let args = Args::try_parse_from([
            "rank",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "client.pem",
            "--tls-key",
            "client.key",
            "--tls-server-name",
            "localhost",
        ])
        .unwrap();
        assert_eq!(
            args.tls.config(),
            Some(phoenix_client::TlsConfig {
                ca: Some("ca.pem".into()),
                cert: Some("client.pem".into()),
                key: Some("client.key".into()),
                server_name: Some("localhost".into()),
            })
        );
        // An empty value is no value (PHOENIX_TLS_CA= turns TLS off, as in the Python client).
        let args = Args::try_parse_from(["rank", "--tls-ca", "", "--tls-server-name", ""]).unwrap();
        assert_eq!(args.tls.config(), None);
    }
}
