//! The Rust client against the real Python server (started with the project's own command).
//!
//! Environment: `PHOENIX_RANKER` (the `phoenix-ranker` command, default: from PATH) and
//! `PHOENIX_PYTHON` (a Python with the project installed, for the cross-language check).
//! `tests/clients/test_rust_client.py` sets both and runs `cargo test`. The tests named
//! `offline_*` need no server; the `tls_*` ones also need the `openssl` command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phoenix_client::{
    pb, synthetic, xai, xai_request, ClientConfig, ClientError, PhoenixClient, TlsConfig, ACTIONS,
    XAI_ACTIONS,
};
use tonic::Code;

struct Server {
    child: Child,
    /// `127.0.0.1:PORT`, the form the Python client takes (the Rust client takes it too).
    target: String,
    port: u16,
}

impl Server {
    /// `phoenix-ranker serve --log-json ...`, ready once its log stream (stderr, one JSON
    /// object a line) has the `serving` event, as `tests/server/harness.py` waits for it.
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// [`Server::start`] with more flags (e.g. `--tls-cert`).
    fn start_with(flags: &[&Path]) -> Server {
        let command = std::env::var("PHOENIX_RANKER").unwrap_or_else(|_| "phoenix-ranker".into());
        let mut child = Command::new(&command)
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--log-json",
            ])
            .args(["--max-batch-size", "8", "--candidate-buckets", "8,32"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        // Ready once every batch shape is compiled (`compiled_all`), as the Python harness
        // waits by default: the load generator below then meets a settled server, not one
        // still compiling in the background with fewer rows per batch.
        let mut port = None;
        loop {
            let Some(line) = lines.next().and_then(Result::ok) else {
                panic!("server exited before serving:\n{}", log.join("\n"));
            };
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                if event["event"] == "serving" {
                    port = Some(u16::try_from(event["port"].as_u64().unwrap()).unwrap());
                    if event["shapes_ready"] == event["shapes"] {
                        break;
                    }
                } else if event["event"] == "compiled_all" {
                    break;
                }
            }
            log.push(line);
        }
        let port = port.expect("compiled_all comes after serving");
        std::thread::spawn(move || lines.for_each(drop)); // keep draining the log
        Server {
            child,
            target: format!("127.0.0.1:{port}"),
            port,
        }
    }

    /// A client of this server, with a deadline generous enough for this machine's cores.
    async fn client(&self) -> PhoenixClient {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        PhoenixClient::connect(&self.target, config).await.unwrap()
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PYTHON_RANK: &str = r#"
import json, struct, sys
try:
    from request.raw import RawRequest
except ImportError:  # before RawRequest moved from model.features to the request package
    from model.features import RawRequest
from server.client import RankingClient
from server.contracts.convert import raw_request_to_pb
raw = RawRequest.from_dict(json.load(open(sys.argv[2])))
with RankingClient(sys.argv[1]) as client:
    response = client.rank(raw_request_to_pb(raw))
bits = lambda x: struct.unpack("<I", struct.pack("<f", x))[0]
print(json.dumps([[bits(x) for x in s.logits] for s in response.scores]))
"#;

fn python_logit_bits(target: &str, request: &serde_json::Value) -> Vec<Vec<u32>> {
    let python = std::env::var("PHOENIX_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = std::env::temp_dir().join(format!("phoenix-rust-{}.json", std::process::id()));
    std::fs::write(&path, request.to_string()).unwrap();
    let out = Command::new(python)
        .args(["-c", PYTHON_RANK, target])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a command, asserts it succeeded, and returns its standard output.
fn stdout_of(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Test certificates made with the real `openssl` command, as `tests/certs.py` makes them: a CA,
/// a server certificate for localhost / 127.0.0.1 signed by it, a client certificate signed by
/// it, and a second CA that signed nothing of ours. Removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(name: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("phoenix-rust-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        certs.ca("ca");
        certs.ca("other-ca");
        certs.leaf(
            "server",
            "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        certs
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("the TLS tests need the openssl command (apt-get install openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=phoenix test {name}"),
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=phoenix {name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    /// TLS trusting `ca` (a file of this directory), with the client certificate or without.
    fn tls(&self, ca: &str, client_certificate: bool) -> TlsConfig {
        TlsConfig {
            ca: Some(self.path(ca)),
            cert: client_certificate.then(|| self.path("client.pem")),
            key: client_certificate.then(|| self.path("client.key")),
            server_name: None,
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects with `tls` and ranks a few candidates: every candidate gets a logit per action.
async fn rank_over(target: &str, tls: Option<TlsConfig>) -> Result<(), ClientError> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(30),
        tls,
        ..ClientConfig::default()
    };
    let client = PhoenixClient::connect(target, config).await?;
    let actions = client.model_info().actions.len();
    let request = synthetic::request(3, 8, 5, client.model_info().product_surface_vocab_size);
    let ranked = client
        .rank(request.user_id, &request.history, &request.candidates)
        .await?;
    assert_eq!(ranked.len(), request.candidates.len());
    for c in &ranked {
        assert_eq!(c.logits.len(), actions, "post {}", c.post_id);
        assert!(c.logits.iter().all(|x| x.is_finite()), "post {}", c.post_id);
    }
    Ok(())
}

/// Asserts that a client is refused: at connection (the TLS handshake), or on its first call
/// (a server that refuses a client's certificate may say so only after the handshake).
fn assert_refused(what: &str, result: Result<(), ClientError>) {
    match result {
        Err(ClientError::Connect { .. }) | Err(ClientError::Status { .. }) => {
            eprintln!("{what}: refused as expected: {}", result.unwrap_err());
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_against_a_live_server() {
    let server = Server::start();
    let client = server.client().await;
    let info = client.model_info().clone();
    assert_eq!(
        info.actions, ACTIONS,
        "the server's actions are not the crate's ACTIONS"
    );
    let surfaces = info.product_surface_vocab_size;
    assert!(surfaces > 0);

    // Rust and Python clients get bit-identical logits for the same request.
    let request = synthetic::request(11, 40, 45, surfaces);
    let ranked = client
        .rank(request.user_id, &request.history, &request.candidates)
        .await
        .unwrap();
    let ours: Vec<Vec<u32>> = ranked
        .iter()
        .map(|c| c.logits.iter().map(|x| x.to_bits()).collect())
        .collect();
    let theirs = python_logit_bits(&server.target, &synthetic::request_json(&request));
    assert_eq!(ours, theirs, "Rust and Python logits differ");
    for c in &ranked {
        let fav = c.scores.favorite_score.unwrap();
        let from_logit = 1.0 / (1.0 + (-f64::from(c.logits[0])).exp());
        assert!(
            (fav - from_logit).abs() < 1e-6,
            "favorite_score is not sigmoid(logits[0])"
        );
        assert!((c.weighted_score - client.config().weights.score(&c.scores)).abs() < 1e-9);
    }

    // The same request through a channel that balances per call (here over two endpoints of
    // the one server: what a headless Service's addresses look like to the client).
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.target)).unwrap();
    let balanced =
        tonic::transport::Channel::balance_list([endpoint.clone(), endpoint].into_iter());
    let via_balanced = PhoenixClient::from_channel(balanced, client.config().clone())
        .await
        .unwrap()
        .rank(request.user_id, &request.history, &request.candidates)
        .await
        .unwrap();
    let bits: Vec<Vec<u32>> = via_balanced
        .iter()
        .map(|c| c.logits.iter().map(|x| x.to_bits()).collect())
        .collect();
    assert_eq!(bits, ours, "a balanced channel gives other logits");

    // Candidate isolation seen from Rust: alone == inside the larger (multi-window) request.
    for index in [0usize, 20, 44] {
        let alone = client
            .rank(
                request.user_id,
                &request.history,
                &request.candidates[index..=index],
            )
            .await
            .unwrap();
        for (a, b) in alone[0].logits.iter().zip(&ranked[index].logits) {
            assert!(
                (a - b).abs() <= 1e-5,
                "candidate {index}: {a} alone vs {b} in the request"
            );
        }
    }

    // Errors surface with their status and message, and are not retried.
    let mut bad = request.candidates[..3].to_vec();
    bad[1].product_surface = surfaces + 83;
    match client.rank(request.user_id, &request.history, &bad).await {
        Err(ClientError::Status { status, attempts }) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().contains("candidates[1].product_surface"),
                "{}",
                status.message()
            );
            assert_eq!(attempts, 1, "INVALID_ARGUMENT must not be retried");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // The load generator runs against the server at concurrency 8 with zero errors (with the
    // target as a URI: both forms work).
    let report = stdout_of(Command::new(env!("CARGO_BIN_EXE_loadgen")).args([
        "--target",
        &format!("http://{}", server.target),
        "--concurrency",
        "8",
        "--duration-secs",
        "3",
        "--warmup-secs",
        "0.5",
        "--history",
        "32",
        "--candidates",
        "40",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["surfaces"], surfaces, "{report}");

    // The example binary ranks and prints the candidates sorted by weighted score.
    let text = String::from_utf8(stdout_of(Command::new(env!("CARGO_BIN_EXE_rank")).args([
        "--target",
        &server.target,
        "--candidates",
        "6",
    ])))
    .unwrap();
    let scores: Vec<f64> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(scores.len(), 6, "{text}");
    assert!(
        text.lines().next().unwrap().contains(&format!(
            "{} history events, 6 candidates",
            info.history_seq_len
        )),
        "--history defaults to the model's history_seq_len: {text}"
    );
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_next_actions_scores_as_rank() {
    let server = Server::start();
    let client = server.client().await;
    let surfaces = client.model_info().product_surface_vocab_size;
    // xAI's contract has one product surface per candidate set, and no history action for our
    // dwell_time: the request is made expressible in it first.
    let mut request = synthetic::request(23, 40, 45, surfaces);
    for candidate in &mut request.candidates {
        candidate.product_surface = 3;
    }
    for event in &mut request.history {
        event.actions.retain(|&a| a != pb::Action::DwellTime as i32);
    }
    let ranked = client
        .rank(request.user_id, &request.history, &request.candidates)
        .await
        .unwrap();
    let predicted = client
        .rank_xai(request.user_id, &request.history, &request.candidates)
        .await
        .unwrap();
    assert_eq!(predicted.len(), ranked.len());
    for (p, r) in predicted.iter().zip(&ranked) {
        assert_eq!(p.post_id, r.post_id);
        for ((name, a), (_, b)) in p.scores.named().iter().zip(r.scores.named()) {
            assert!((a - b).abs() <= 1e-5 * b.max(1e-2), "{name}: {a} vs {b}");
        }
        assert_eq!(
            p.scores.named().len(),
            19,
            "every action, dwell_time included"
        );
    }

    // xAI's 2026-10 logits list: one logit per requested ActionName, in request order, Rank's
    // logit where the model has a head and -inf elsewhere; the dwell_time head by its
    // ContinuousActionName, the continuous heads the model lacks absent.
    let fav = xai::ActionName::ServerTweetFav as u32;
    let requested = vec![
        fav,
        2,
        xai::ActionName::ClientQuotedTweetClick as u32,
        xai::ActionName::ClientTweetLiveStreamReply as u32,
        xai::ActionName::AdsMmpClick as u32,
        fav,
    ];
    let dwell = xai::ContinuousActionName::DwellTime as u32;
    let mut logits_list = xai_request(
        request.user_id,
        &request.history,
        &request.candidates,
        String::new(),
    );
    logits_list.return_logprob = false;
    logits_list.return_logits_list = true;
    logits_list.requested_action_indices = requested.clone();
    logits_list.requested_continuous_action_indices = vec![
        xai::ContinuousActionName::HomeProfileVisitSecs as u32,
        dwell,
        xai::ContinuousActionName::HomeVideoContinuationSecs as u32,
    ];
    let answer = client.predict_next_actions(logits_list).await.unwrap();
    let actions = &client.model_info().actions;
    let column = |value: u32| -> Option<usize> {
        let (name, _) = XAI_ACTIONS.iter().find(|(_, a)| *a as u32 == value)?;
        actions.iter().position(|a| a == name)
    };
    let distributions = &answer.distribution_sets[0].candidate_distributions;
    assert_eq!(distributions.len(), ranked.len());
    for (d, r) in distributions.iter().zip(&ranked) {
        assert_eq!(d.requested_action_logits.len(), requested.len());
        for (&value, &got) in requested.iter().zip(&d.requested_action_logits) {
            match column(value) {
                Some(c) => assert!((got - r.logits[c]).abs() <= 1e-5, "{value}: {got}"),
                None => assert_eq!(got, f32::NEG_INFINITY, "{value}"),
            }
        }
        assert_eq!(
            d.index_to_continuous_values.len(),
            1,
            "only the head the model has"
        );
        let p = f64::from(d.index_to_continuous_values[&dwell]);
        assert!((p - r.scores.dwell_time.unwrap()).abs() <= 1e-5);
        assert!(d.top_log_probs.is_empty() && d.continuous_actions_values.is_empty());
    }

    // The load generator sends the same form, with zero errors.
    let report = stdout_of(Command::new(env!("CARGO_BIN_EXE_loadgen")).args([
        "--target",
        &server.target,
        "--xai",
        "--concurrency",
        "8",
        "--duration-secs",
        "2",
        "--warmup-secs",
        "0.5",
        "--candidates",
        "40",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["form"], "xai", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_after_the_retries() {
    let mut server = Server::start();
    let client = PhoenixClient::connect(&server.target, ClientConfig::default())
        .await
        .unwrap();
    let request = synthetic::request(5, 3, 2, 16);
    client
        .rank(request.user_id, &request.history, &request.candidates)
        .await
        .unwrap();
    server.stop();
    let started = std::time::Instant::now();
    match client
        .rank(request.user_id, &request.history, &request.candidates)
        .await
    {
        Err(ClientError::Status { status, attempts }) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(attempts, client.config().retry.max_attempts);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_is_verified_against_the_ca() {
    let certs = Certs::make("tls");
    let server = Server::start_with(&[
        Path::new("--tls-cert"),
        &certs.path("server.pem"),
        Path::new("--tls-key"),
        &certs.path("server.key"),
    ]);
    let https = format!("https://localhost:{}", server.port);

    // The CA that signed the server's certificate: ranks, by name (https://) and by IP (a plain
    // target with TLS options is TLS too; 127.0.0.1 is in the certificate).
    for target in [&https, &server.target] {
        rank_over(target, Some(certs.tls("ca.pem", false)))
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    // --tls-server-name: the name checked instead of the target's host.
    let named = |name: &str| TlsConfig {
        server_name: Some(name.into()),
        ..certs.tls("ca.pem", false)
    };
    rank_over(&server.target, Some(named("localhost")))
        .await
        .unwrap();
    match rank_over(&server.target, Some(named("ranker.example.com"))).await {
        Err(ClientError::Connect { reason, .. }) => {
            assert!(reason.contains("ranker.example.com"), "{reason}")
        }
        other => panic!("a name the certificate lacks: {other:?}"),
    }

    // A client trusting only another CA fails at the handshake.
    match rank_over(&https, Some(certs.tls("other-ca.pem", false))).await {
        Err(ClientError::Connect { target, reason }) => {
            assert_eq!(target, https);
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("a server certificate of an untrusted CA: {other:?}"),
    }
    // http:// and host:port without TLS options stay plaintext, which a TLS server refuses.
    for target in [format!("http://{}", server.target), server.target.clone()] {
        assert_refused(
            &format!("plaintext {target}"),
            rank_over(&target, None).await,
        );
    }

    // The rank binary over https:// with --tls-ca.
    let text = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_rank"))
            .args(["--target", &https, "--candidates", "4", "--tls-ca"])
            .arg(certs.path("ca.pem")),
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with(&format!("{https}: model ")), "{text}");
    assert_eq!(text.lines().count(), 2 + 4, "{text}");
    // And with only the other CA, it fails naming the https:// target.
    let out = Command::new(env!("CARGO_BIN_EXE_rank"))
        .arg("--target")
        .arg(&https)
        .arg("--tls-ca")
        .arg(certs.path("other-ca.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("could not connect to {https}: ")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_requires_a_client_certificate() {
    let certs = Certs::make("mtls");
    let server = Server::start_with(&[
        Path::new("--tls-cert"),
        &certs.path("server.pem"),
        Path::new("--tls-key"),
        &certs.path("server.key"),
        Path::new("--tls-client-ca"),
        &certs.path("ca.pem"),
    ]);
    let https = format!("https://localhost:{}", server.port);

    rank_over(&https, Some(certs.tls("ca.pem", true)))
        .await
        .unwrap_or_else(|e| panic!("with a client certificate: {e}"));
    assert_refused(
        "no client certificate",
        rank_over(&https, Some(certs.tls("ca.pem", false))).await,
    );

    // The load generator over mutual TLS, configured by the flags' environment twins.
    let report = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .env("PHOENIX_TARGET", &https)
            .env("PHOENIX_TLS_CA", certs.path("ca.pem"))
            .env("PHOENIX_TLS_CLIENT_CERT", certs.path("client.pem"))
            .env("PHOENIX_TLS_CLIENT_KEY", certs.path("client.key"))
            .args(["--concurrency", "2", "--duration-secs", "1"])
            .args([
                "--warmup-secs",
                "0.2",
                "--history",
                "8",
                "--candidates",
                "8",
            ]),
    );
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["target"], https.as_str(), "{report}");
}

#[test]
fn offline_every_binary_has_help() {
    for (binary, flags) in [
        (
            env!("CARGO_BIN_EXE_rank"),
            &[
                "--target",
                "--candidates",
                "--history",
                "--seed",
                "--surfaces",
                "--print-request",
                "--tls-ca",
                "--tls-cert",
                "--tls-key",
                "--tls-server-name",
                "PHOENIX_TLS_CA",
                "PHOENIX_TLS_CLIENT_CERT",
                "PHOENIX_TLS_CLIENT_KEY",
            ][..],
        ),
        (
            env!("CARGO_BIN_EXE_loadgen"),
            &[
                "--target",
                "--concurrency",
                "--duration-secs",
                "--history",
                "--candidates",
                "--warmup-secs",
                "--timeout-ms",
                "--connections",
                "--seed",
                "--surfaces",
                "--tls-ca",
                "--tls-cert",
                "--tls-key",
                "--tls-server-name",
                "PHOENIX_TLS_CA",
                "PHOENIX_TLS_CLIENT_CERT",
                "PHOENIX_TLS_CLIENT_KEY",
            ][..],
        ),
    ] {
        let help = String::from_utf8(stdout_of(Command::new(binary).arg("--help"))).unwrap();
        for flag in flags {
            assert!(help.contains(flag), "{binary} --help lacks {flag}:\n{help}");
        }
    }
}

#[test]
fn offline_print_request_is_the_synthetic_request_as_json() {
    let printed = stdout_of(Command::new(env!("CARGO_BIN_EXE_rank")).args([
        "--print-request",
        "--seed",
        "3",
        "--history",
        "5",
        "--candidates",
        "4",
        "--surfaces",
        "2",
    ]));
    let printed: serde_json::Value = serde_json::from_slice(&printed).unwrap();
    assert_eq!(
        printed,
        synthetic::request_json(&synthetic::request(3, 5, 4, 2))
    );
    // Without a server to ask: --history 64, --surfaces 16, and the usual --seed 7 and 12 candidates.
    let printed = stdout_of(Command::new(env!("CARGO_BIN_EXE_rank")).args([
        "--print-request",
        "--target",
        "127.0.0.1:1",
    ]));
    let printed: serde_json::Value = serde_json::from_slice(&printed).unwrap();
    assert_eq!(
        printed,
        synthetic::request_json(&synthetic::request(7, 64, 12, 16))
    );
}

#[test]
fn offline_a_failed_connection_names_the_target() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for binary in [env!("CARGO_BIN_EXE_rank"), env!("CARGO_BIN_EXE_loadgen")] {
        for target in [
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        ] {
            let out = Command::new(binary)
                .args(["--target", &target])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{binary} {target}: {stderr}");
            assert!(
                stderr.contains(&format!("could not connect to http://127.0.0.1:{port}: ")),
                "{binary} {target}: {stderr}"
            );
        }
        let out = Command::new(binary)
            .args(["--target", "::1:50051"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("\"::1:50051\"") && stderr.contains("brackets"),
            "{stderr}"
        );
    }
}
