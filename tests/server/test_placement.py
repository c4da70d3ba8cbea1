"""Table placement: the host gather, the auto policy, and served logits that do not depend on
where the tables live (device, host, split by rows over two devices), in every serving mode."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import server.engine.placement
from model.checkpoint import default_checkpoint_path, load_checkpoint
from model.generate import init_checkpoint, preset, quantize_checkpoint
from model.tables import TABLES, host_lookup, quantize_int8, scale_name
from request.columns import SCHEMA
from request.hashing import TableRows, hashes_per_table
from server.contracts.convert import logits_from_pb, raw_request_to_pb
from server.engine.placement import HostTables, choose, gathered_rows
from server.scheduling.buckets import BatchShape
from tests.conftest import ROOT
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess
from tests.server.test_devices import TWO_DEVICES

CONFIG = load_checkpoint(default_checkpoint_path(), verify_tables=False).config
HASHES = hashes_per_table(CONFIG)

# -- the auto policy ------------------------------------------------------------------------


def test_auto_places_tables_on_the_host_past_their_share_of_device_memory():
    gib = 2**30
    assert choose("auto", 40 * gib, 141 * gib, 0.5) == "device"
    assert choose("auto", 80 * gib, 141 * gib, 0.5) == "host"
    assert choose("auto", 470 * gib, 141 * gib, 0.5) == "host"  # xAI's published shape
    assert choose("auto", 80 * gib, None, 0.5) == "device"  # memory not reported
    assert choose("host", 1, 141 * gib, 0.5) == "host"  # an explicit choice stands
    assert choose("device", 470 * gib, 141 * gib, 0.5) == "device"
    # Split by rows, a device holds its share: xAI's shape fits 8 H200s, not 2.
    assert choose("auto", 470 * gib, 141 * gib, 0.5, 8, "rows") == "device"
    assert choose("auto", 470 * gib, 141 * gib, 0.5, 2, "rows") == "host"
    assert choose("auto", 470 * gib, 141 * gib, 0.5, 8, "replicated") == "host"


def test_rows_sharding_with_the_default_placement_serves_from_the_devices(compilation_cache,
                                                                         default_ranker):  # fmt: skip
    env = {**compilation_cache, **TWO_DEVICES}
    with ServerProcess(*SMALL_PLAN, "--table-sharding", "rows", env=env) as server:
        info = server.client.model_info()
        assert (info.table_placement, info.table_sharding) == ("device", "rows")
        tables = [e for e in server.events() if e.get("event") == "tables"]
        assert tables[0]["placement"] == "device" and "--table-sharding rows" in tables[0]["msg"]
        raw = random_request(np.random.default_rng(12), 16, 40)
        got = logits_from_pb(server.client.rank(raw_request_to_pb(raw), timeout=30))
        np.testing.assert_allclose(got, default_ranker.logits_many([raw])[0], atol=1e-5)


# -- the host gather ------------------------------------------------------------------------


def _tables(rng, rows: TableRows, width: int, int8: bool) -> dict[str, np.ndarray]:
    out = {}
    for table, n in zip(TABLES, rows, strict=True):
        values = rng.standard_normal((n, width)).astype(np.float32)
        if int8:
            out[table], out[scale_name(table)] = quantize_int8(values)
        else:
            out[table] = values
    return out


def _random_inputs(rng, shape: BatchShape, rows: TableRows, padding: float):
    """Inputs of `shape` whose table columns hold random rows (row 0, padding, at `padding`)."""
    layout = SCHEMA.layout(CONFIG)
    if shape.is_prefix:
        inputs = SCHEMA.empty_prefix(layout, shape.rows, shape.history)
    else:
        inputs = SCHEMA.empty_candidates(layout, shape.rows, shape.candidates)
    sizes = dict(zip(TABLES, rows, strict=True))
    replaced = {}
    for column in SCHEMA.columns:
        if column.table is None or column.name not in inputs._fields:
            continue
        old = getattr(inputs, column.name)
        ids = rng.integers(1, sizes[column.table], old.shape, dtype=np.int64)
        ids[rng.random(old.shape) < padding] = 0
        replaced[column.name] = ids.astype(old.dtype)
    return inputs._replace(**replaced)


# Prefix calls (no candidate slots) and chunk calls, one row and several.
GATHER_SHAPES = [
    BatchShape(2, 8, 0),
    BatchShape(1, 32, 0),
    BatchShape(4, 8, 8),
    BatchShape(2, 32, 32),
]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(GATHER_SHAPES),
    rows=st.sampled_from([TableRows(3, 5, 2), TableRows(50, 400, 30)]),
    padding=st.sampled_from([0.0, 0.5, 1.0]),
    int8=st.booleans(),
)
def test_gathered_rows_are_the_rows_the_ids_named(seed, shape, rows, padding, int8):
    rng = np.random.default_rng(seed)
    tables = _tables(rng, rows, 8, int8)
    inputs = _random_inputs(rng, shape, rows, padding)
    g = HostTables(tables, HASHES).gather(shape, inputs)
    limits = gathered_rows(shape, HASHES)
    total = 0
    for column in SCHEMA.columns:
        if column.table is None or column.name not in inputs._fields:
            continue
        table = column.table
        before, after = getattr(inputs, column.name), getattr(g.inputs, column.name)
        assert after.shape == before.shape and after.dtype == before.dtype
        # The gathered table at the new positions is the full table at the old ids.
        np.testing.assert_array_equal(g.tables[table][after], host_lookup(tables, table, before))
        assert np.array_equal(after == 0, before == 0)  # padding stays row 0, masks unchanged
    for table in TABLES:
        assert g.tables[table].shape == (limits[table], 8)  # fixed per call shape
        assert g.tables[table].dtype == np.float32
        names = [c.name for c in SCHEMA.columns if c.table == table and c.name in inputs._fields]
        distinct = {int(i) for n in names for i in np.ravel(getattr(inputs, n))} - {0}
        total += len(distinct)
        used = {int(i) for n in names for i in np.ravel(getattr(g.inputs, n))}
        assert used <= set(range(len(distinct) + 1))  # positions, dense, from the front
    assert g.rows == total


def _resident_file_mb() -> float:
    """This process's resident file-backed memory (mapped files), in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile")) / 1024


@pytest.mark.parametrize("release", [True, False], ids=["released", "never-released"])
def test_gathering_keeps_the_mapped_tables_out_of_resident_memory(release, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    # A 256 MB post table of 1,000,000 rows of 256 bytes; each row read maps at least the
    # kernel's 64 KiB fault-around window, so ~20,000 random rows map most of it unless the
    # pages are released.
    config, rows = preset("default")
    path = tmp_path / "big.safetensors"
    init_checkpoint(path, config, rows._replace(post=1_000_000))
    monkeypatch.setattr(server.engine.placement, "RELEASE_BYTES", 16 * 2**20 if release else 2**62)
    ckpt = load_checkpoint(path, verify_tables=False)
    tables = HostTables(ckpt.tables, hashes_per_table(config))
    shape = BatchShape(8, 0, 32)
    rng = np.random.default_rng(0)
    before, peak = _resident_file_mb(), 0.0
    for _ in range(40):  # 40 calls of 8 x 32 candidates x 2 hashes: ~20,000 post rows
        tables.gather(shape, _random_inputs(rng, shape, ckpt.rows, 0.0))
        peak = max(peak, _resident_file_mb() - before)
    if release:
        assert peak < 16 + 40, peak  # one release's worth, and one call's rows beyond it
    else:
        assert peak > 150, peak  # the same reads, never released: most of the table


# -- served: host vs device ------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "int8.safetensors"
    quantize_checkpoint(default_checkpoint_path(), out, "int8")
    return out


def _requests(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return [random_request(rng, int(rng.integers(0, 70)), int(rng.integers(1, 90)))
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("frontends", ["0", "2"], ids=["one-process", "frontend-workers"])
def test_host_placement_serves_the_device_logits(frontends, compilation_cache, default_ranker):
    raws = _requests(21, 6)
    want = default_ranker.logits_many(raws)
    with ServerProcess(*SMALL_PLAN, "--table-placement", "host", "--frontend-workers", frontends,
                       env=compilation_cache) as server:  # fmt: skip
        for raw, w in zip(raws, want, strict=True):
            got = logits_from_pb(server.client.rank(raw_request_to_pb(raw)))
            np.testing.assert_allclose(got, w, atol=1e-5, rtol=1e-5)
        # The same prefix again: served from the prefix cache, still the same logits.
        again = logits_from_pb(server.client.rank(raw_request_to_pb(raws[0])))
        np.testing.assert_allclose(again, want[0], atol=1e-5, rtol=1e-5)
        ckpt = load_checkpoint(default_checkpoint_path())
        info = server.client.model_info()
        assert (info.table_placement, info.table_dtype) == ("host", "float32")
        assert info.table_bytes == ckpt.table_bytes > 0
        metrics = server.wait_for_metrics(
            lambda m: m.get("phoenix_table_verification") == 1, "the tables' verification"
        )
        assert metrics["phoenix_table_gather_seconds_count"] >= len(raws)
        assert metrics["phoenix_table_rows_gathered_sum"] > 0
        series = [k for k in metrics if k.startswith("phoenix_model_info{")]
        assert len(series) == 1 and "table_placement=host," in series[0], series
        assert f"table_bytes={ckpt.table_bytes}," in series[0]
        assert ckpt.info.file_sha256 in series[0]  # verified after SERVING, then published
        assert server.client.model_info().checkpoint_sha256 == ckpt.info.file_sha256
        started = [e for e in server.events() if e.get("event") == "tables"]
        assert started and started[0]["table_bytes"] == ckpt.table_bytes


RUNNER_PARITY = textwrap.dedent(
    """
    import json, re, sys
    import numpy as np
    from model import load_checkpoint
    from request.encoding import encode
    from request.layout import Piece, windows
    from server.scheduling.buckets import BatchShape
    from server.config import ServerConfig, ShapeConfig, TableConfig
    from server.engine.runner import ModelRunner
    from tests.helpers import random_request

    ckpt = load_checkpoint(sys.argv[1])
    rng = np.random.default_rng(5)
    raws = [random_request(rng, int(rng.integers(0, 70)), int(rng.integers(1, 40)))
            for _ in range(6)]
    encoded = [encode(r, ckpt.config, ckpt.rows) for r in raws]
    out = {}
    for placement, sharding in json.loads(sys.argv[2]):
        config = ServerConfig(shapes=ShapeConfig(max_batch_size=4, candidate_buckets=(8, 32)),
                              tables=TableConfig(table_placement=placement,
                                                 table_sharding=sharding))
        runner = ModelRunner(ckpt, config)
        runner.warmup()
        runner.compile_rest()
        got = []
        for e in encoded:
            scores = np.zeros((e.num_candidates, ckpt.config.num_actions), np.float32)
            pieces = [Piece(e, s, t) for s, t in windows(e.num_candidates, 8)]
            for i in range(0, len(pieces), 4):
                part = pieces[i : i + 4]
                result = runner.run(runner.pack(part)).values
                for row, p in enumerate(part):
                    scores[p.start : p.stop] = result[row, : p.stop - p.start, :scores.shape[1]]
            got.append(scores.tolist())
        params = runner.model.params.get("hash_embeddings", {})
        specs = sorted({str(a.sharding.spec) for a in params.values()})
        history = runner.engine.full_plan.history_buckets[-1]
        hlo = "".join(runner.engine.executable(BatchShape(4, history, c)).as_text()
                      for c in (0, 8))  # a prefix call and a chunk call
        shapes = lambda op: [[int(d) for d in dims.split(",") if d] for dims in
                             re.findall(r"\\w+\\[([\\d,]*)\\][^ ]*[,)]* " + op + r"\\(", hlo)]
        out[f"{placement}/{sharding}"] = {
            "scores": got, "devices": len(runner.engine.devices), "table_specs": specs,
            "sharding": runner.engine.sharding, "all_gathers": shapes("all-gather"),
            "all_reduces": [[int(x) for x in d.split(",") if x]
                            for line in re.findall(r"= \\(?([^=]*?)\\)? all-reduce\\(", hlo)
                            for d in re.findall(r"\\[([\\d,]*)\\]", line)]}
    print(json.dumps(out))
    """
)


def _runner_parity(checkpoint, combos, env=None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER_PARITY, str(checkpoint), json.dumps(combos)], cwd=ROOT,
        capture_output=True, text=True, timeout=900,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_int8_tables_score_the_same_on_the_host_as_on_the_device(int8_checkpoint):
    result = _runner_parity(int8_checkpoint, [["device", "replicated"], ["host", "replicated"]])
    device, host = result["device/replicated"], result["host/replicated"]
    for d, h in zip(device["scores"], host["scores"], strict=True):
        np.testing.assert_allclose(np.array(h), np.array(d), atol=1e-5, rtol=1e-5)
    assert result["host/replicated"]["table_specs"] == []  # no table on the device


def test_tables_split_by_rows_over_two_devices_score_as_one_device(int8_checkpoint):
    # Both dtypes in one process per dtype: float32 (the default model) and int8 with scales;
    # host placement too, its gathered tables copied to both devices.
    combos = [["device", "replicated"], ["device", "rows"], ["host", "replicated"]]
    for checkpoint in (default_checkpoint_path(), int8_checkpoint):
        result = _runner_parity(checkpoint, combos, TWO_DEVICES)
        rows, replicated = result["device/rows"], result["device/replicated"]
        for a, b in zip(result["host/replicated"]["scores"], replicated["scores"], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5, rtol=1e-5)
        assert rows["devices"] == 2 and rows["sharding"] == "rows"
        specs = {"P('rows', None)", "P('rows',)"}  # tables [N, D], int8 scales [N]
        assert set(rows["table_specs"]) <= specs and "P('rows', None)" in rows["table_specs"]
        assert replicated["table_specs"] == ["P()"]
        for a, b in zip(rows["scores"], replicated["scores"], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5, rtol=1e-5)
        # The row-sharded lookup crosses devices as an all-reduce of looked-up rows [.., D]
        # (and their int8 scales [..]); no table, or slice of one, is ever gathered.
        ckpt = load_checkpoint(checkpoint, verify_tables=False)
        table_rows = {n for r in ckpt.rows for n in (r, -(-r // 2), 2 * -(-r // 2))}
        assert not replicated["all_reduces"]
        assert [CONFIG.emb_size] == sorted({d[-1] for d in rows["all_reduces"] if len(d) == 4})
        for dims in rows["all_gathers"] + rows["all_reduces"]:
            assert not table_rows & set(dims), dims


# -- verification after SERVING ------------------------------------------------------------


def test_a_corrupt_host_placed_table_is_reported_after_serving(tmp_path, compilation_cache,
                                                              int8_checkpoint):  # fmt: skip
    bad = tmp_path / "bad.safetensors"  # a file with per-tensor checksums (the embedded
    shutil.copy(int8_checkpoint, bad)  # default model predates them: checked whole at load)
    with open(bad, "r+b") as f:  # flip one byte of the post table's data
        (length,) = struct.unpack("<Q", f.read(8))
        begin, _ = json.loads(f.read(length))["hash_embeddings/post"]["data_offsets"]
        f.seek(8 + length + begin + 1000)
        byte = f.read(1)
        f.seek(8 + length + begin + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with ServerProcess(*SMALL_PLAN, "--checkpoint", str(bad), "--table-placement", "host",
                       env=compilation_cache) as server:  # fmt: skip
        server.wait_for_metrics(lambda m: m.get("phoenix_table_verification") == -1,
                                "the corruption to be found", timeout=60)  # fmt: skip
        errors = [e for e in server.events() if e.get("event") == "tables_corrupt"]
        assert errors and errors[0]["level"] == "error"
        assert "hash_embeddings/post" in errors[0]["msg"]
        assert server.client.model_info().checkpoint_sha256 == ""  # never claimed verified
        assert "Traceback" not in server.log()
    # With device placement the same file is refused at start (its tables are read anyway).
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "phoenix_ranker", "serve", "--checkpoint", str(bad), "--port", "0",
         "--metrics-port", "0", "--table-placement", "device"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "hash_embeddings/post" in out.stderr
    assert time.monotonic() - started < 300
