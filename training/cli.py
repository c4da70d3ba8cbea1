"""Training sub-commands of `phoenix-ranker`: train, eval, demo (the synthetic world).

Flags are parsed here and nowhere else; the library functions take typed arguments. JAX is
imported inside the commands so that the light commands start fast.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from training.manifest import load_manifest, world_sample, write_manifest


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the synthetic engagement world")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    p.add_argument("--model-version", default=None)
    p.add_argument("--seed", type=int, default=0, help="parameter init and batch order")
    p.add_argument("--world-seed", type=int, default=0, help="the synthetic world")
    # Unset training flags keep TrainConfig's defaults.
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--train-requests", type=int)
    p.add_argument("--eval-requests", type=int)
    p.add_argument("--emb-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--q-heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--key-size", type=int, default=16)
    p.add_argument("--widening-factor", type=float, default=2.0)
    p.add_argument("--history", type=int, default=64, help="history_seq_len")
    p.add_argument("--candidates", type=int, default=32, help="candidate_seq_len")
    p.add_argument("--history-attention", choices=("causal", "bidirectional"), default="causal")
    p.add_argument("--user-rows", type=int, default=4099)
    p.add_argument("--post-rows", type=int, default=16411)
    p.add_argument("--author-rows", type=int, default=1031)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="per-action held-out AUC of a trained model vs a baseline")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the embedded model")
    p.add_argument("--manifest", type=Path, default=None, help="default: beside the checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="rank a synthetic user's candidates offline")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the embedded model")
    p.add_argument("--seed", type=int, default=7, help="which synthetic user and candidates")
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--weights", default="", help="e.g. 'favorite=1,report=-100'")
    p.set_defaults(func=cmd_demo)


def cmd_train(args) -> int:
    import jax

    from model.checkpoint import save_checkpoint
    from model.config import HashConfig, PhoenixModelConfig, TransformerConfig
    from model.ranker import Ranker
    from request.hashing import TableRows
    from training.evaluate import evaluate, format_table, popularity_table
    from training.train import EVAL_STREAM, TrainConfig, datasets, train
    from training.world import World, WorldConfig

    config = PhoenixModelConfig(
        model=TransformerConfig(
            emb_size=args.emb_size,
            key_size=args.key_size,
            num_q_heads=args.q_heads,
            num_kv_heads=args.kv_heads,
            num_layers=args.layers,
            widening_factor=args.widening_factor,
            attn_output_multiplier=args.key_size**-0.5,
        ),
        emb_size=args.emb_size,
        history_seq_len=args.history,
        candidate_seq_len=args.candidates,
        hash_config=HashConfig(),
        history_attention=args.history_attention,
    )
    rows = TableRows(user=args.user_rows, post=args.post_rows, author=args.author_rows)
    world = World(
        WorldConfig(
            seed=args.world_seed, product_surface_vocab_size=config.product_surface_vocab_size
        )
    )
    overrides = {
        name: getattr(args, name)
        for name in ("steps", "batch_size", "learning_rate", "train_requests", "eval_requests")
        if getattr(args, name) is not None
    }
    train_config = TrainConfig(seed=args.seed, **overrides)
    train_data, held_out = datasets(world, config, train_config)
    start = time.time()
    params, losses = train(config, rows, train_data, train_config)
    seconds = time.time() - start
    version = args.model_version or f"phoenix-synthetic-s{args.seed}-w{args.world_seed}"
    info = save_checkpoint(args.out, params, config, model_version=version)

    aucs = evaluate(
        Ranker(params, config), held_out, popularity_table(train_data, world.config.num_posts)
    )
    print(format_table(aucs))
    manifest = {
        "command": "phoenix-ranker " + shlex.join(sys.argv[1:]),
        "model_version": version,
        "checkpoint_sha256": info.file_sha256,
        "created_at": info.created_at,
        "world": world.config.to_dict(),
        "train": train_config.to_dict(),
        "table_rows": rows._asdict(),
        "final_loss": losses[-1],
        "train_seconds": round(seconds, 1),
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "python": platform.python_version(), "machine": platform.machine()},
        "eval": {
            "held_out_requests": len(held_out),
            "held_out_stream": EVAL_STREAM,
            "auc": {r.action: {"model": r.model, "baseline": r.baseline, "positives": r.positives}
                    for r in aucs},
        },
    }  # fmt: skip
    path = write_manifest(args.out, manifest)
    print(f"wrote {args.out} and {path} in {seconds:.0f}s of training")
    return 0


def cmd_eval(args) -> int:
    import numpy as np

    from model.checkpoint import default_checkpoint_path, load_checkpoint
    from model.ranker import Ranker
    from training.evaluate import evaluate, format_table, popularity_table
    from training.train import TrainConfig, datasets
    from training.world import World, WorldConfig

    checkpoint = args.checkpoint or default_checkpoint_path()
    manifest = load_manifest(checkpoint, args.manifest)
    ckpt = load_checkpoint(checkpoint)
    world = World(WorldConfig(**manifest["world"]))
    train_data, held_out = datasets(world, ckpt.config, TrainConfig(**manifest["train"]))
    aucs = evaluate(
        Ranker(ckpt.state.params, ckpt.config),
        held_out,
        popularity_table(train_data, world.config.num_posts),
    )
    if args.json:
        print(json.dumps({r.action: asdict(r) for r in aucs}, indent=2))
    else:
        print(f"{ckpt.info.model_version}: {len(held_out)} held-out requests, "
              f"{held_out.labels.shape[1]} candidates each")  # fmt: skip
        print(format_table(aucs))
        mean = np.nanmean
        print(
            f"{'mean':<22}{mean([r.model for r in aucs]):>10.4f}{mean([r.baseline for r in aucs]):>10.4f}"
        )
    return 0


def cmd_demo(args) -> int:
    import numpy as np

    from model.checkpoint import default_checkpoint_path, load_checkpoint
    from model.ranker import Ranker
    from model.scoring import format_ranking, parse_weights

    checkpoint = args.checkpoint or default_checkpoint_path()
    ckpt = load_checkpoint(checkpoint)
    sample = world_sample(checkpoint, ckpt.config.history_seq_len, args.candidates, args.seed)
    request = sample.request(0)
    logits = Ranker(ckpt.state.params, ckpt.config).logits(request)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    engaged = int((request.history_actions.sum(axis=1) > 0).sum())
    print(f"model {ckpt.info.model_version}: user {request.user_id}, {request.num_history} "
          f"history events ({engaged} with engagement), {request.num_candidates} candidates")  # fmt: skip
    print(format_ranking(request.candidate_post_ids, request.candidate_author_ids, probabilities,
                         weights=parse_weights(args.weights)))  # fmt: skip
    fav = 0
    truth = np.corrcoef(probabilities[:, fav], sample.probabilities[0, :, fav])[0, 1]
    print(f"correlation of predicted and true P(favorite) over these candidates: {truth:.3f}")
    return 0
