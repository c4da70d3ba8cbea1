//! Deterministic synthetic requests (examples, load generation, cross-language checks).
//!
//! The one definition, which Python's `request/synthetic.py` follows too (its module docstring
//! states the same spec; `tests/clients/test_rust_python_parity.py` checks that both give the
//! same request, via `rank --print-request`):
//!
//! ```text
//! rng = SplitMix64(seed)
//! for each of `history` events:
//!     post_id = rng.next_u64(); author_id = rng.below(5000)
//!     actions = [a for a in 1..=19 if rng.unit() < 0.1]   (one unit() draw per a, in order)
//!     product_surface = rng.below(surfaces)
//! for each of `candidates`:
//!     post_id = rng.next_u64(); author_id = rng.below(5000); product_surface = rng.below(surfaces)
//! user_id = rng.next_u64()
//! request_id = "synthetic-{seed}"
//! ```
//!
//! with `below(n) = next_u64() % n` and `unit() = (next_u64() >> 11) / 2^53`. `surfaces` is the
//! model's `ModelInfo.product_surface_vocab_size`.

use crate::pb;
use crate::scores::ACTIONS;

/// Authors are drawn from [0, AUTHORS).
pub const AUTHORS: u64 = 5000;
/// Each of the 19 actions is in a history event with this probability, independently.
pub const ACTION_PROBABILITY: f64 = 0.1;

/// SplitMix64: a tiny, fast, well-mixed PRNG (the same generator the id hashing uses).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `next_u64() % n`: in [0, n) (with the modulo's tiny bias, which the spec keeps).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `(next_u64() >> 11) / 2^53`: uniform in [0, 1), exact in f64.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The synthetic request of `seed` with `history` events and `candidates` candidates whose
/// product surfaces are in [0, surfaces). Panics if `surfaces` is 0.
pub fn request(seed: u64, history: usize, candidates: usize, surfaces: u32) -> pb::RankRequest {
    assert!(surfaces > 0, "surfaces must be at least 1");
    let surfaces = u64::from(surfaces);
    let mut rng = SplitMix64(seed);
    let history = (0..history)
        .map(|_| pb::HistoryEvent {
            post_id: rng.next_u64(),
            author_id: rng.below(AUTHORS),
            actions: (1..=ACTIONS.len() as i32)
                .filter(|_| rng.unit() < ACTION_PROBABILITY)
                .collect(),
            product_surface: rng.below(surfaces) as u32,
        })
        .collect();
    let candidates = (0..candidates)
        .map(|_| pb::Candidate {
            post_id: rng.next_u64(),
            author_id: rng.below(AUTHORS),
            product_surface: rng.below(surfaces) as u32,
        })
        .collect();
    pb::RankRequest {
        user_id: rng.next_u64(),
        history,
        candidates,
        request_id: format!("synthetic-{seed}"),
        ..Default::default()
    }
}

/// A request in the JSON layout of Python's `synthetic_request_dict` (and of
/// `phoenix-ranker rank --request` / `RawRequest.from_dict`): ids as integers, actions by name
/// ([`ACTIONS`]). An action value outside the enum is written as its number.
pub fn request_json(request: &pb::RankRequest) -> serde_json::Value {
    let action = |a: i32| match usize::try_from(a).ok().and_then(|a| a.checked_sub(1)) {
        Some(i) if i < ACTIONS.len() => serde_json::json!(ACTIONS[i]),
        _ => serde_json::json!(a),
    };
    serde_json::json!({
        "user_id": request.user_id,
        "request_id": request.request_id,
        "history": request.history.iter().map(|e| serde_json::json!({
            "post_id": e.post_id,
            "author_id": e.author_id,
            "actions": e.actions.iter().map(|a| action(*a)).collect::<Vec<_>>(),
            "product_surface": e.product_surface,
        })).collect::<Vec<_>>(),
        "candidates": request.candidates.iter().map(|c| serde_json::json!({
            "post_id": c.post_id,
            "author_id": c.author_id,
            "product_surface": c.product_surface,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_hashing_contract() {
        // Output k of SplitMix64 seeded with x is the contract's h_k(x) (golden values).
        let mut rng = SplitMix64(42);
        assert_eq!(rng.next_u64(), 13679457532755275413);
        assert_eq!(rng.next_u64(), 2949826092126892291);
    }

    #[test]
    fn requests_are_deterministic() {
        assert_eq!(request(7, 5, 9, 16), request(7, 5, 9, 16));
        assert_ne!(request(7, 5, 9, 16), request(8, 5, 9, 16));
        assert_eq!(request(1, 3, 4, 16).candidates.len(), 4);
        assert_eq!(request(7, 0, 2, 16).request_id, "synthetic-7");
    }

    #[test]
    fn requests_follow_the_spec() {
        // Draw by draw, as the module documentation (and request/synthetic.py) states it.
        let seed = u64::MAX; // the state wraps on the first draw
        let mut rng = SplitMix64(seed);
        let r = request(seed, 2, 3, 5);
        for event in &r.history {
            assert_eq!(event.post_id, rng.next_u64());
            assert_eq!(event.author_id, rng.next_u64() % 5000);
            let actions: Vec<i32> = (1..=19).filter(|_| rng.unit() < 0.1).collect();
            assert_eq!(event.actions, actions);
            assert_eq!(u64::from(event.product_surface), rng.next_u64() % 5);
        }
        for c in &r.candidates {
            assert_eq!(c.post_id, rng.next_u64());
            assert_eq!(c.author_id, rng.next_u64() % 5000);
            assert_eq!(u64::from(c.product_surface), rng.next_u64() % 5);
        }
        assert_eq!(r.user_id, rng.next_u64());
        assert_eq!(r.request_id, format!("synthetic-{seed}"));
    }

    #[test]
    fn surfaces_bound_the_product_surfaces() {
        let r = request(3, 200, 200, 3);
        let surfaces = r
            .history
            .iter()
            .map(|e| e.product_surface)
            .chain(r.candidates.iter().map(|c| c.product_surface));
        assert!(surfaces.clone().all(|s| s < 3));
        assert!(request(3, 50, 50, 1)
            .candidates
            .iter()
            .all(|c| c.product_surface == 0));
        let actions: usize = r.history.iter().map(|e| e.actions.len()).sum();
        assert!(
            (200..=560).contains(&actions),
            "{actions} actions in 200 events"
        ); // ~380
    }

    #[test]
    fn json_names_actions_and_keeps_ids_exact() {
        let mut r = request(9, 1, 1, 16);
        r.history[0].actions = vec![1, 19, 7];
        r.user_id = u64::MAX;
        let json = request_json(&r);
        assert_eq!(
            json["history"][0]["actions"],
            serde_json::json!(["favorite", "dwell_time", "video_quality_view"])
        );
        assert_eq!(json["user_id"].as_u64(), Some(u64::MAX));
        assert_eq!(json["request_id"], "synthetic-9");
        assert_eq!(
            json["candidates"][0]["post_id"].as_u64(),
            Some(r.candidates[0].post_id)
        );
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["candidates", "history", "request_id", "user_id"]);
    }
}
