"""The request JSON form: schema, example file, one-line errors, and a JAX-free import."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from request.raw import RawRequest, RequestError
from request.schema import SCHEMA_PATH, render, request_schema
from tests.conftest import PARITY_CASES, ROOT
from tests.server.harness import phoenix_ranker

EXAMPLE = ROOT / "examples" / "request.json"


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA_PATH.read_text() == render(), "stale: run `python -m request.schema`"
    jsonschema.Draft202012Validator.check_schema(request_schema())


def test_the_example_request_is_valid_and_loads():
    data = json.loads(EXAMPLE.read_text())
    jsonschema.validate(data, request_schema())
    raw = RawRequest.from_json_file(EXAMPLE)
    assert raw.num_history == len(data["history"]) and raw.num_candidates == len(data["candidates"])
    assert raw.to_dict() == data | {"request_id": raw.request_id}


@pytest.mark.parametrize("case", PARITY_CASES[:4], ids=lambda c: c.id)
def test_json_form_round_trips(case):
    raw = RawRequest.from_dict(case.request_json)
    back = RawRequest.from_dict(raw.to_dict())
    np.testing.assert_array_equal(back.history_actions, raw.history_actions)
    np.testing.assert_array_equal(back.candidate_post_ids, raw.candidate_post_ids)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({}, "request", "'user_id' is a required property"),
        ({"user_id": -1}, "user_id", "minimum"),
        ({"user_id": 2**64}, "user_id", "maximum"),
        ({"user_id": "7"}, "user_id", "not of type 'integer'"),
        ({"user_id": 1, "candidates": [{"post_id": 1}]}, "candidates[0]", "'author_id'"),
        ({"user_id": 1, "history": [{"post_id": 1, "author_id": 2, "actions": ["like"]}]},
         "history[0].actions[0]", "'like' is not one of"),
        ({"user_id": 1, "cases": []}, "request", "'cases' was unexpected"),
        ([1, 2], "request", "not of type 'object'"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_field(data, field, words):
    with pytest.raises(RequestError) as e:
        RawRequest.from_dict(data)
    assert e.value.field == field
    assert words in e.value.message


def test_the_parity_fixture_file_is_refused_with_a_clear_message(tmp_path):
    """The fixture holds cases, not a request: the error says what is wrong in one line."""
    run = subprocess.run(
        [*phoenix_ranker(), "rank", "--request", str(ROOT / "tests/fixtures/reference-parity/cases.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "user_id" in run.stderr


@pytest.mark.parametrize("content", [None, "{not json", ""])
def test_a_missing_or_broken_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "request.json"
    if content is not None:
        path.write_text(content)
    run = subprocess.run(
        [*phoenix_ranker(), "rank", "--request", str(path), "--target", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert str(path) in run.stderr


def test_the_request_path_and_the_frontend_import_neither_jax_nor_haiku():
    code = (
        "import sys, request.raw, request.encoding, request.layout, request.synthetic, "
        "server.contracts.convert, server.scheduling.composition, server.config, server.flags, server.door.ipc, "
        "server.door.service, server.door.transport, server.door.frontend_worker, server.operations.lifecycle; "
        "print(sorted(m for m in ('jax', 'haiku', 'optax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
