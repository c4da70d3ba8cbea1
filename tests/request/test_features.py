"""The request's features are declared once (`request.features`): every wire form, the JSON
schema, RawRequest and the model inputs agree with the declaration, and round-trip through it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.checkpoint import default_checkpoint_path, load_checkpoint
from model.config import PhoenixModelConfig
from request.columns import COLUMNS
from request.features import FEATURES, VOCABULARIES, Kind, Part, defaults, of_part
from request.hashing import HASHES, TableRows
from request.raw import RawRequest, RequestError
from request.schema import request_schema
from server.config import Limits
from server.contracts.convert import (
    decode_rank_request,
    raw_request_to_columnar_pb,
    raw_request_to_pb,
)
from server.rpc import ranking_pb2 as pb
from tests.helpers import random_request

CONFIG = load_checkpoint(default_checkpoint_path(), verify_tables=False).config


def test_raw_request_is_the_features_then_the_request_id():
    fields = [f.name for f in dataclasses.fields(RawRequest)]
    assert fields == [f.name for f in FEATURES] + ["request_id"]


def test_every_model_input_comes_from_one_feature():
    assert [c.source for c in COLUMNS] == [f.name for f in FEATURES]
    assert len({c.name for c in COLUMNS}) == len(COLUMNS)
    for f in FEATURES:
        assert (f.table is not None) == (f.kind is Kind.ID), f.name
        assert (f.vocab is not None) == (f.kind is Kind.INDEX), f.name
        if f.table is not None:
            assert f.table in TableRows._fields and f.table in HASHES


def test_the_proto_carries_every_feature_in_both_forms():
    items = {Part.HISTORY: (pb.HistoryEvent, pb.HistoryColumns),
             Part.CANDIDATE: (pb.Candidate, pb.CandidateColumns)}  # fmt: skip
    for f in of_part(Part.USER):
        assert f.key in pb.RankRequest.DESCRIPTOR.fields_by_name
    for part, (row, columns) in items.items():
        assert pb.RankRequest.DESCRIPTOR.fields_by_name[part.items].message_type is row.DESCRIPTOR
        for f in of_part(part):
            assert f.key in row.DESCRIPTOR.fields_by_name, f.name
            assert f.columns_field in columns.DESCRIPTOR.fields_by_name, f.name


def test_every_vocabulary_is_in_the_model_config_and_model_info():
    for vocab in VOCABULARIES:
        assert vocab in {f.name for f in dataclasses.fields(PhoenixModelConfig)}
        assert vocab in pb.ModelInfo.DESCRIPTOR.fields_by_name


def test_the_json_schema_names_exactly_the_features():
    schema = request_schema()["properties"]
    assert set(schema) == {f.key for f in of_part(Part.USER)} | {
        "request_id",
        Part.HISTORY.items,
        Part.CANDIDATE.items,
    }
    for part in (Part.HISTORY, Part.CANDIDATE):
        item = schema[part.items]["items"]
        assert list(item["properties"]) == [f.key for f in of_part(part)]
        assert item["required"] == [f.key for f in of_part(part) if f.kind is Kind.ID]


def _equal(a: RawRequest, b: RawRequest) -> None:
    for f in FEATURES:
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)
        if f.part is not Part.USER:
            assert getattr(b, f.name).dtype == f.dtype, f.name
    assert a.request_id == b.request_id


@pytest.mark.parametrize("seed", range(5))
def test_every_form_round_trips_through_the_declaration(seed):
    rng = np.random.default_rng(seed)
    raw = random_request(rng, int(rng.integers(0, 40)), int(rng.integers(1, 30)))
    raw = dataclasses.replace(raw, request_id=f"r-{seed}")
    _equal(raw, RawRequest.from_dict(raw.to_dict()))
    limits = Limits()
    for to_pb in (raw_request_to_pb, raw_request_to_columnar_pb):
        _equal(raw, decode_rank_request(to_pb(raw).SerializeToString(), CONFIG, limits))


def test_defaults_are_each_features_empty_value():
    for part in (Part.HISTORY, Part.CANDIDATE):
        values = defaults(part, 3)
        for f in of_part(part):
            assert values[f.name].shape == (3, *f.row_shape)
            assert values[f.name].dtype == f.dtype and not values[f.name].any()


def test_validation_names_the_feature_out_of_its_vocabulary():
    raw = random_request(np.random.default_rng(0), 4, 3)
    for f in FEATURES:
        if f.vocab is None:
            continue
        bad = getattr(raw, f.name).copy()
        bad[1] = getattr(CONFIG, f.vocab)
        with pytest.raises(RequestError) as e:
            dataclasses.replace(raw, **{f.name: bad}).validate(CONFIG)
        assert e.value.field == f"{f.part.items}[1].{f.key}"
