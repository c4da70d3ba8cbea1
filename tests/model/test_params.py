"""The parameter tree is the reference's: names and shapes from docs/interop.md."""

import pytest

from model import ffn_size
from model.params import expected_shapes
from request.hashing import TableRows


@pytest.mark.parametrize(
    "emb, widening, expected",
    [
        (256, 2.0, 344),
        (64, 2.0, 88),
        (128, 4.0, 344),
        (768, 4.0, 2048),
        (512, 2.0, 688),
        (2560, 4.0, 6832),
    ],
)
def test_ffn_size(emb, widening, expected):
    assert ffn_size(emb, widening) == expected
    assert expected % 8 == 0


def test_public_pure_functions_are_importable():
    from model import ffn_size, make_recsys_attn_mask, right_anchored_rope_positions  # noqa: F401


def test_parameter_tree_matches_the_contract(parity_config):
    c = parity_config
    d, a, v = c.emb_size, c.num_actions, c.product_surface_vocab_size
    u, i, au = (c.hash_config.num_user_hashes, c.hash_config.num_item_hashes,
                c.hash_config.num_author_hashes)  # fmt: skip
    hq, hkv, k = c.model.num_q_heads, c.model.num_kv_heads, c.model.key_size
    f = ffn_size(d, c.model.widening_factor)
    rows = TableRows(user=257, post=1031, author=509)
    expected = {
        "phoenix_model/proj_mat_1": (u * d, d),
        "phoenix_model/proj_mat_3": ((i + au + 2) * d, d),
        "phoenix_model/proj_mat_2": ((i + au + 1) * d, d),
        "phoenix_model/action_projection": (a, d),
        "phoenix_model/product_surface_embedding_table": (v, d),
        "phoenix_model/rms_norm/scale": (d,),
        "phoenix_model/unembeddings": (d, a),
        "hash_embeddings/user": (257, d),
        "hash_embeddings/post": (1031, d),
        "hash_embeddings/author": (509, d),
    }
    for layer in range(c.model.num_layers):
        p = f"transformer/decoder_layer_{layer}"
        expected |= {
            f"{p}/rms_norm/scale": (d,),
            f"{p}/multi_head_attention/query/w": (d, hq * k),
            f"{p}/multi_head_attention/key/w": (d, hkv * k),
            f"{p}/multi_head_attention/value/w": (d, hkv * k),
            f"{p}/multi_head_attention/linear/w": (hq * k, d),
            f"{p}/rms_norm_1/scale": (d,),
            f"{p}/rms_norm_2/scale": (d,),
            f"{p}/linear_v/w": (d, f),
            f"{p}/linear/w": (d, f),
            f"{p}/linear_1/w": (f, d),
            f"{p}/rms_norm_3/scale": (d,),
        }
    assert expected_shapes(c, rows) == expected
