//! Per-action probabilities as named fields, and the home-mixer's weighted score.

use crate::xai::{ActionName, ContinuousActionName, NextActionDistribution};

/// The 19 action names in proto order: `pb::Action` value `a` is named `ACTIONS[a - 1]`.
///
/// Must match `request/actions.py` `ACTIONS` (the Python side's list, which the server reports as
/// `ModelInfo.actions`) and the `Action` enum of `proto/phoenix/ranking/v1/ranking.proto`. The
/// unit test `actions_follow_the_proto_enum` checks the proto; the integration test
/// `contract_against_a_live_server` checks the server's `ModelInfo.actions`; and
/// `tests/clients/test_rust_python_parity.py` checks the names in synthetic requests against Python.
pub const ACTIONS: [&str; 19] = [
    "favorite",
    "reply",
    "repost",
    "photo_expand",
    "click",
    "profile_click",
    "video_quality_view",
    "share",
    "share_via_dm",
    "share_via_copy_link",
    "dwell",
    "quote",
    "quoted_click",
    "follow_author",
    "not_interested",
    "block_author",
    "mute_author",
    "report",
    "dwell_time",
];

/// Our action name -> xAI's `ActionName`: the 18 actions xAI's home-mixer reads, indexing the
/// `topLogProbs` of a `PredictNextActions` answer. Python's `server/contracts/xai.py` `XAI_ACTION_OF`
/// states the same table (`tests/clients/test_rust_python_parity.py` holds them equal, through
/// `rank --print-xai-actions`). Our 19th action, `dwell_time`, comes back as the continuous
/// value `DWELL_TIME`.
pub const XAI_ACTIONS: [(&str, ActionName); 18] = [
    ("favorite", ActionName::ServerTweetFav),
    ("reply", ActionName::ServerTweetReply),
    ("repost", ActionName::ServerTweetRetweet),
    ("photo_expand", ActionName::ClientTweetPhotoExpand),
    ("click", ActionName::ClientTweetClick),
    ("profile_click", ActionName::ClientTweetClickProfile),
    (
        "video_quality_view",
        ActionName::ClientTweetVideoQualityView,
    ),
    ("share", ActionName::ClientTweetShare),
    (
        "share_via_dm",
        ActionName::ClientTweetClickSendViaDirectMessage,
    ),
    (
        "share_via_copy_link",
        ActionName::ClientTweetShareViaCopyLink,
    ),
    ("dwell", ActionName::ClientTweetRecapDwelled),
    ("quote", ActionName::ServerTweetQuote),
    ("quoted_click", ActionName::ClientQuotedTweetClick),
    ("follow_author", ActionName::ClientTweetFollowAuthor),
    ("not_interested", ActionName::ClientTweetNotInterestedIn),
    ("block_author", ActionName::ClientTweetBlockAuthor),
    ("mute_author", ActionName::ClientTweetMuteAuthor),
    ("report", ActionName::ClientTweetReport),
];

/// One candidate's action probabilities, named as the home-mixer names them.
///
/// Filled by action *name* from `ModelInfo.actions`, never by position, so a server whose model
/// orders (or adds) actions differently still fills the right fields. A field the model does not
/// predict stays `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhoenixScores {
    pub favorite_score: Option<f64>,
    pub reply_score: Option<f64>,
    pub repost_score: Option<f64>,
    pub photo_expand_score: Option<f64>,
    pub click_score: Option<f64>,
    pub profile_click_score: Option<f64>,
    pub vqv_score: Option<f64>,
    pub share_score: Option<f64>,
    pub share_via_dm_score: Option<f64>,
    pub share_via_copy_link_score: Option<f64>,
    pub dwell_score: Option<f64>,
    pub quote_score: Option<f64>,
    pub quoted_click_score: Option<f64>,
    pub follow_author_score: Option<f64>,
    pub not_interested_score: Option<f64>,
    pub block_author_score: Option<f64>,
    pub mute_author_score: Option<f64>,
    pub report_score: Option<f64>,
    pub dwell_time: Option<f64>,
}

impl PhoenixScores {
    /// The field an action name maps to (`None` for names this client does not know).
    fn field_mut(&mut self, action: &str) -> Option<&mut Option<f64>> {
        Some(match action {
            "favorite" => &mut self.favorite_score,
            "reply" => &mut self.reply_score,
            "repost" => &mut self.repost_score,
            "photo_expand" => &mut self.photo_expand_score,
            "click" => &mut self.click_score,
            "profile_click" => &mut self.profile_click_score,
            "video_quality_view" => &mut self.vqv_score,
            "share" => &mut self.share_score,
            "share_via_dm" => &mut self.share_via_dm_score,
            "share_via_copy_link" => &mut self.share_via_copy_link_score,
            "dwell" => &mut self.dwell_score,
            "quote" => &mut self.quote_score,
            "quoted_click" => &mut self.quoted_click_score,
            "follow_author" => &mut self.follow_author_score,
            "not_interested" => &mut self.not_interested_score,
            "block_author" => &mut self.block_author_score,
            "mute_author" => &mut self.mute_author_score,
            "report" => &mut self.report_score,
            "dwell_time" => &mut self.dwell_time,
            _ => return None,
        })
    }

    /// Scores from probabilities whose i-th value belongs to `actions[i]`.
    pub fn from_named(actions: &[String], probabilities: &[f32]) -> Self {
        let mut scores = Self::default();
        for (name, p) in actions.iter().zip(probabilities) {
            if let Some(field) = scores.field_mut(name) {
                *field = Some(f64::from(*p));
            }
        }
        scores
    }

    /// Scores from one `NextActionDistribution` of a `PredictNextActions` answer: each action
    /// of [`XAI_ACTIONS`] is `exp(topLogProbs[its ActionName])` (none past the vector's end, as
    /// the home-mixer reads it), `dwell_time` is `continuousActionsValues[DWELL_TIME]`.
    pub fn from_xai(distribution: &NextActionDistribution) -> Self {
        let mut scores = Self::default();
        for (name, action) in XAI_ACTIONS {
            if let Some(log_p) = distribution.top_log_probs.get(action as usize) {
                *scores.field_mut(name).expect("a known action") = Some(f64::from(*log_p).exp());
            }
        }
        let dwell = ContinuousActionName::DwellTime as usize;
        scores.dwell_time = distribution
            .continuous_actions_values
            .get(dwell)
            .map(|v| f64::from(*v));
        scores
    }

    /// (action name, probability) for every action the model predicted.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let fields = [
            ("favorite", self.favorite_score),
            ("reply", self.reply_score),
            ("repost", self.repost_score),
            ("photo_expand", self.photo_expand_score),
            ("click", self.click_score),
            ("profile_click", self.profile_click_score),
            ("video_quality_view", self.vqv_score),
            ("share", self.share_score),
            ("share_via_dm", self.share_via_dm_score),
            ("share_via_copy_link", self.share_via_copy_link_score),
            ("dwell", self.dwell_score),
            ("quote", self.quote_score),
            ("quoted_click", self.quoted_click_score),
            ("follow_author", self.follow_author_score),
            ("not_interested", self.not_interested_score),
            ("block_author", self.block_author_score),
            ("mute_author", self.mute_author_score),
            ("report", self.report_score),
            ("dwell_time", self.dwell_time),
        ];
        fields
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .collect()
    }
}

/// Weights of the home-mixer's score `sum(weight[action] * probability[action])`.
///
/// Defaults follow the proportions of the weights X published for its 2023 heavy ranker:
/// positive for engagement (a reply or profile click ~25x a favorite), strongly negative for
/// not-interested, block, mute and report. They are Python's `model.scoring.DEFAULT_WEIGHTS`
/// (`tests/clients/test_rust_python_parity.py` checks, through `rank --print-weights`).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights(pub Vec<(String, f64)>);

impl Default for Weights {
    fn default() -> Self {
        let pairs = [
            ("favorite", 0.5),
            ("reply", 13.5),
            ("repost", 1.0),
            ("photo_expand", 0.1),
            ("click", 11.0),
            ("profile_click", 12.0),
            ("video_quality_view", 0.005),
            ("share", 1.0),
            ("share_via_dm", 1.0),
            ("share_via_copy_link", 1.0),
            ("dwell", 0.1),
            ("quote", 1.0),
            ("quoted_click", 0.5),
            ("follow_author", 4.0),
            ("not_interested", -74.0),
            ("block_author", -74.0),
            ("mute_author", -74.0),
            ("report", -369.0),
            ("dwell_time", 0.1),
        ];
        Weights(pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect())
    }
}

impl Weights {
    /// The weight of an action (0 when it has none).
    pub fn get(&self, action: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == action)
            .map_or(0.0, |(_, w)| *w)
    }

    /// Replace one action's weight.
    pub fn with(mut self, action: &str, weight: f64) -> Self {
        match self.0.iter_mut().find(|(n, _)| n == action) {
            Some(entry) => entry.1 = weight,
            None => self.0.push((action.to_string(), weight)),
        }
        self
    }

    /// The weighted score of one candidate; actions the model did not predict count 0.
    pub fn score(&self, scores: &PhoenixScores) -> f64 {
        scores
            .named()
            .into_iter()
            .map(|(name, p)| self.get(name) * p)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_names_not_positions() {
        let actions: Vec<String> = ["report", "favorite", "unheard_of"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = PhoenixScores::from_named(&actions, &[0.25, 0.5, 0.75]);
        assert_eq!(scores.report_score, Some(0.25));
        assert_eq!(scores.favorite_score, Some(0.5));
        assert_eq!(scores.reply_score, None);
        assert_eq!(scores.named().len(), 2);
    }

    #[test]
    fn actions_follow_the_proto_enum() {
        for (i, name) in ACTIONS.iter().enumerate() {
            let action = crate::pb::Action::try_from(i as i32 + 1).unwrap();
            assert_eq!(
                action.as_str_name(),
                format!("ACTION_{}", name.to_uppercase())
            );
        }
        assert!(crate::pb::Action::try_from(ACTIONS.len() as i32 + 1).is_err());
    }

    #[test]
    fn every_action_has_a_field_and_a_weight() {
        let names: Vec<String> = ACTIONS.iter().map(|s| s.to_string()).collect();
        let scores = PhoenixScores::from_named(&names, &[0.5; 19]);
        let named: Vec<&str> = scores.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(named, ACTIONS);
        let defaults = Weights::default();
        let weights: Vec<&str> = defaults.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(weights, ACTIONS);
    }

    #[test]
    fn weighted_score_uses_negative_weights() {
        let weights = Weights::default().with("favorite", 2.0);
        let actions = vec!["favorite".to_string(), "report".to_string()];
        let scores = PhoenixScores::from_named(&actions, &[0.5, 0.5]);
        assert!((weights.score(&scores) - (2.0 * 0.5 - 369.0 * 0.5)).abs() < 1e-12);
        assert!(Weights::default().get("block_author") < 0.0);
        assert!(Weights::default().get("reply") > 0.0);
    }
}
