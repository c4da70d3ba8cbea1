import json

import pytest

from model import ConfigError, PhoenixModelConfig
from tests.conftest import PARITY_DIR


def fixture_json() -> dict:
    return json.loads((PARITY_DIR / "config.json").read_text())


def test_interop_json_round_trips():
    data = fixture_json()
    config = PhoenixModelConfig.from_dict(data)
    assert config.to_dict() == data
    assert PhoenixModelConfig.from_json(config.to_json()) == config
    assert config.history_end == 1 + data["history_seq_len"]


def test_reference_config_without_our_fields_gets_the_defaults():
    data = fixture_json()
    del data["rope_positions"], data["history_attention"]
    config = PhoenixModelConfig.from_dict(data)
    assert config.rope_positions == "right_anchored" and config.history_attention == "causal"
    assert config.candidates_isolated_across_windows


def test_plain_positions_are_not_isolated_across_windows():
    config = PhoenixModelConfig.from_dict({**fixture_json(), "rope_positions": "plain"})
    assert not config.candidates_isolated_across_windows


@pytest.mark.parametrize(
    "change, field",
    [
        ({"surprise": 1}, "surprise"),
        ({"emb_size": 32}, "emb_size"),
        ({"history_seq_len": 0}, "history_seq_len"),
        ({"history_seq_len": True}, "history_seq_len"),
        ({"history_attention": "sideways"}, "history_attention"),
        (
            {
                "model": {
                    "emb_size": 64,
                    "key_size": 15,
                    "num_q_heads": 4,
                    "num_kv_heads": 2,
                    "num_layers": 2,
                }
            },
            "key_size",
        ),
        (
            {"model": {"emb_size": 64, "num_q_heads": 4, "num_kv_heads": 2, "num_layers": 2}},
            "key_size",
        ),
        (
            {
                "model": {
                    "emb_size": 64,
                    "key_size": 16,
                    "num_q_heads": 4,
                    "num_kv_heads": 2,
                    "num_layers": 2,
                    "widening_factor": -1,
                }
            },
            "widening_factor",
        ),
        ({"hash_config": {"num_user_hashes": 0}}, "num_user_hashes"),
    ],
)
def test_bad_fields_are_named(change, field):
    with pytest.raises(ConfigError, match=field):
        PhoenixModelConfig.from_dict({**fixture_json(), **change})


def test_not_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        PhoenixModelConfig.from_json("{")
    with pytest.raises(ConfigError, match="object"):
        PhoenixModelConfig.from_json("[1]")


def test_a_reference_config_with_the_module_name_field_imports():
    data = json.loads((PARITY_DIR / "config.json").read_text())
    for name in (None, "transformer"):
        data["model"]["name"] = name
        assert PhoenixModelConfig.from_dict(data) == PhoenixModelConfig.from_json(
            (PARITY_DIR / "config.json").read_text()
        )
    data["model"]["name"] = 3
    with pytest.raises(ConfigError, match="name"):
        PhoenixModelConfig.from_dict(data)
