"""Every local device: batches spread across devices give the one-device logits.

JAX fixes its device count when it starts, so each check runs in a process of its own with
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (two CPU devices, as a two-GPU host
would have two accelerators).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from server.contracts.convert import logits_from_pb, raw_request_to_pb
from tests.conftest import ROOT
from tests.helpers import random_request
from tests.server.conftest import SMALL_PLAN
from tests.server.harness import ServerProcess

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

RUNNER_CHECK = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from model import Ranker, load_checkpoint
    from model.checkpoint import default_checkpoint_path
    from request.encoding import encode
    from request.layout import Piece, windows
    from server.engine.runner import ModelRunner
    from tests.helpers import random_request, runner_config

    ckpt = load_checkpoint(default_checkpoint_path())
    runner = ModelRunner(ckpt, runner_config(4, (8, 32), prefix_cache_bytes=1 << 20))
    runner.warmup()
    runner.compile_rest()
    rng = np.random.default_rng(0)
    raws = [random_request(rng, int(rng.integers(0, 70)), int(rng.integers(1, 60)))
            for _ in range(9)]
    encoded = [encode(r, ckpt.config, ckpt.rows) for r in raws]
    pieces = [Piece(e, s, t) for e in encoded for s, t in windows(e.num_candidates, 8)]
    got = {id(e): np.zeros((e.num_candidates, 2 * ckpt.config.num_actions), np.float32)
           for e in encoded}
    spread = set()
    batches = [pieces[i : i + 4] for i in range(0, len(pieces) - 1, 4)] + [pieces[-1:]]
    for part in batches:  # 4-row batches (split across devices) and 1-row ones (whole on each)
        packed = runner.pack(part)
        out = runner.run(packed).values
        sharding = runner.engine.executable(packed.shape).output_shardings[0]  # the scores'
        spread.add((packed.shape.rows, len(sharding.device_set), str(sharding.spec)))
        for row, p in enumerate(part):
            got[id(p.request)][p.start : p.stop] = out[row, : p.stop - p.start]
    want = Ranker(ckpt.state.params, ckpt.config).logits_many(raws)  # one device
    err = max(float(np.abs(got[id(e)][:, :19] - w).max()) for e, w in zip(encoded, want))
    print(json.dumps({"devices": len(runner.engine.devices), "max_abs_diff": err,
                      "calls": sorted(spread)}))
    """
)


def test_the_runner_spreads_batches_across_two_devices_with_one_device_logits():
    out = subprocess.run(
        [sys.executable, "-c", RUNNER_CHECK], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **TWO_DEVICES, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["devices"] == 2
    # 4-row calls are split by rows across both devices; a 1-row call runs on both, whole.
    assert result["calls"] == [[1, 2, "P()"], [4, 2, "P('rows',)"]]
    assert result["max_abs_diff"] <= 1e-5


def test_a_two_device_server_serves_the_one_device_logits(compilation_cache, default_ranker):
    rng = np.random.default_rng(11)
    raws = [random_request(rng, int(rng.integers(0, 70)), int(rng.integers(1, 90)))
            for _ in range(6)]  # fmt: skip
    with ServerProcess(*SMALL_PLAN, env={**compilation_cache, **TWO_DEVICES}) as server:
        assert server.serving_event["devices"] == 2
        for raw, want in zip(raws, default_ranker.logits_many(raws), strict=True):
            got = logits_from_pb(server.client.rank(raw_request_to_pb(raw)))
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
