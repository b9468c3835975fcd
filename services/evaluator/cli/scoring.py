"""Scoring commands: precomputed embeddings (`score`), ILIAS's official features (`score-ilias`),
and exact search sharded across processes or machines (`search-shard`, `search-merge`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from services.evaluator.cli.core import (
    check_engine,
    fail,
    parse_ks,
    print_record,
    app,
    stderr_console,
)


# ---- score ---------------------------------------------------------------------------------
@app.command()
def score(
    gallery: Path = typer.Option(
        ..., "--gallery",
        help="embedding directory (embeddings.npy + items.parquet: id, label; \"\" = distractor) or .npz "
             "(embeddings, ids, labels)",
    ),
    queries: Optional[Path] = typer.Option(
        None, "--queries", help="the queries in either format; omit for intra retrieval over the gallery"
    ),
    k: str = typer.Option("1,5", "--k", help="Recall@K cut-offs, comma-separated"),
    map_k: str = typer.Option("20", "--map-k", help="mAP@K cut-offs, comma-separated"),
    out: Path = typer.Option(..., "--out", help="run record JSON to write (a .queries.jsonl is written beside it)"),
    dataset_name: Optional[str] = typer.Option(None, "--dataset", help="dataset name in the record (default: gallery file name)"),
    model_name: Optional[str] = typer.Option(None, "--model", help="model name in the record (default: gallery file name)"),
    unanswerable_as_miss: bool = typer.Option(False, help="score queries without relevant items as misses"),
    engine: str = typer.Option("auto", help="search engine: auto (the faster on this machine, calibrated once and cached), torch, numpy"),
    open_set: Optional[bool] = typer.Option(
        None, "--open-set/--no-open-set",
        help="open-set rejection figures (default: whenever out-of-catalog queries exist)",
    ),
    scaling: bool = typer.Option(False, "--scaling", help="metrics vs number of distractors (open galleries)"),
    compression: bool = typer.Option(
        False, "--compression", help="truncation / float16 / int8 / binary (+ Qdrant's quantization) sweep"
    ),
    target_precision: float = typer.Option(
        0.95, "--target-precision", min=0.0, max=1.0, help="open set: precision the recommended threshold aims at"
    ),
    ranked: Optional[Path] = typer.Option(
        None, "--ranked", dir_okay=False,
        help="score this merged top-K (`vsbench search-merge --out`) instead of searching; it must come from "
             "`vsbench search-shard` over these same files, at --k >= max(--k, --map-k)",
    ),
) -> None:
    """Score precomputed embeddings (exact search, Recall@K and mAP@K, in percent).

    A directory's embeddings.npy is read memory-mapped and ids/labels stay columnar, so galleries
    larger than memory score in bounded memory (docs/performance.md).

    Writes a run record that `vsbench table` and `vsbench report` read; --open-set, --scaling and
    --compression add the decision analytics (docs/analytics.md)."""
    from services.evaluator.analytics.options import AnalysisOptions
    from services.evaluator.pipeline import Evaluation, EvaluationOptions
    from services.evaluator.precomputed import open_precomputed_inputs
    from services.evaluator.results import check_new_result

    recall_k, map_ks = parse_ks(k, "--k"), parse_ks(map_k, "--map-k")
    check_engine(engine)
    check_new_result(out)
    ranking = None
    if ranked is not None:
        from services.evaluator.sharded_search import read_ranked

        ranking = read_ranked(ranked)
    inputs = open_precomputed_inputs(gallery, queries, dataset_name=dataset_name, model_name=model_name)
    options = EvaluationOptions(
        recall_k=recall_k, map_k=map_ks, engine=engine, unanswerable_as_miss=unanswerable_as_miss, show_progress=False,
        analyses=AnalysisOptions(open_set=open_set, scaling=scaling, compression=compression,
                                 target_precision=target_precision),
        ranked=ranking,
    )
    try:
        outcome = Evaluation(inputs.store, out.parent, options).run(
            inputs.dataset, inputs.client, inputs.model_name, embed=False, out=out
        )
    finally:
        inputs.store.close()
    print_record(outcome.result)


@app.command("score-ilias")
def score_ilias(
    features: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of ILIAS's official HDF5 features"),
    out: Path = typer.Option(..., "--out", help="run record JSON to write (a .queries.jsonl is written beside it)"),
    protocol: str = typer.Option(
        "ilias", "--protocol", help="ilias: the official evaluation (as-stored scores, official AP); vsbench: ours"
    ),
    ilias_dir: Optional[Path] = typer.Option(
        None, "--ilias-dir", file_okay=False,
        help="ILIAS folder holding image_ids/ (default: FEATURES or its parent when they hold it)",
    ),
    k: str = typer.Option("1,5", "--k", help="Recall@K cut-offs"),
    map_k: str = typer.Option("20,1000", "--map-k", help="mAP@K cut-offs (ILIAS's own metric is mAP@1000)"),
    text_queries: bool = typer.Option(False, "--text-queries", help="also score features_text_queries.hdf5"),
    total_distractors: Optional[int] = typer.Option(
        None, "--total-distractors", min=0, help="use the first N distractor files (official --total_distractors)"
    ),
    max_distractors: Optional[int] = typer.Option(None, min=0, help="use only the first N distractors"),
    mini_ids: Optional[Path] = typer.Option(None, help="id list selecting distractors (e.g. mini-ILIAS 5M)"),
    model_name: Optional[str] = typer.Option(None, "--model", help="model name in the record (default: the folder name)"),
    taxonomy: Optional[Path] = typer.Option(
        None, "--taxonomy", dir_okay=False, help="official misc/taxonomy.json for category breakdowns"
    ),
    engine: str = typer.Option("auto", help="search engine for --protocol vsbench: auto, torch, numpy"),
) -> None:
    """Score published ILIAS features (features_image_queries / positives / distractors_*.hdf5)."""
    from services.evaluator.ilias import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol takes {' or '.join(PROTOCOLS)}, got {protocol!r}")
    check_engine(engine)
    from services.evaluator.results import check_new_result

    check_new_result(out)
    recall_k, map_ks = parse_ks(k, "--k"), parse_ks(map_k, "--map-k")
    if protocol == "ilias":
        from services.evaluator.ilias.official import score_ilias_official

        summary, outcomes = score_ilias_official(
            features, dataset_dir=ilias_dir, recall_k=recall_k, map_k=map_ks, text_queries=text_queries,
            total_distractors=total_distractors, max_distractors=max_distractors, selected_ids=mini_ids,
            taxonomy=taxonomy,
        )
    else:
        from services.evaluator.ilias.vsbench import score_ilias_vsbench

        if text_queries or taxonomy is not None:
            fail("--text-queries and --taxonomy need --protocol ilias")
        summary, outcomes = score_ilias_vsbench(
            features, recall_k=recall_k, map_k=map_ks, max_distractors=max_distractors,
            selected_ids=mini_ids, distractor_files=total_distractors, engine=engine,
        )
    print_record(_write_summary_record(summary, outcomes(), out, model_name or features.name))
    _print_ilias_extras(summary)


def _print_ilias_extras(summary: dict) -> None:
    """The official evaluation's extra lines: text-query metrics and the breakdowns of the largest K."""
    text = summary.get("text_queries")
    if text:
        stderr_console().print("text queries: " + ", ".join(f"{n} {v:.2f}" for n, v in text["metrics"].items()),
                      highlight=False)
    for query_set, per_k in summary.get("breakdowns", {}).items():
        name, parts = max(per_k.items(), key=lambda item: int(item[0].split("@")[1]))
        line = [f"oracle {parts['oracle']:.2f}"]
        for group in ("scale", "clutter", "categories"):
            if parts.get(group):
                line.append(f"{group}: " + ", ".join(f"{g} {v:.2f}" for g, v in parts[group].items()))
        stderr_console().print(f"{query_set} queries {name} " + "; ".join(line), highlight=False, soft_wrap=True)


def _write_summary_record(summary: dict, outcomes, out: Path, model_name: str):
    """A RunRecord from a scorer that works outside the embedding loop (ILIAS's published
    features: no images, no embedding service)."""
    from services.evaluator.score_stage import versions
    from services.evaluator.record import (
        DatasetRecord, GalleryCounts, ModelRecord, ProtocolRecord, QueryCounts, RunRecord,
    )
    from services.evaluator.results import new_run_id, now_iso, write_run

    dataset = summary["dataset"]
    record = RunRecord(
        run_id=new_run_id(),
        created=now_iso(),
        dataset=DatasetRecord(
            name=dataset["name"], setup=summary["protocol"]["setup"], gallery_type=summary["protocol"]["gallery_type"],
            description=dataset.get("description", ""), source=dataset.get("source", {}),
        ),
        model=ModelRecord(
            name=model_name, dim=int(summary.get("model", {}).get("dim", 0)), backend="precomputed",
            preprocessing=summary.get("model", {}).get("preprocessing", "as in the feature files"),
            dtype=summary.get("model", {}).get("dtype", "float32"),
        ),
        protocol=ProtocolRecord(**summary["protocol"]),
        metrics=summary["metrics"],
        queries=QueryCounts(**summary["queries"]),
        gallery=GalleryCounts(**summary["gallery"]),
        timings=summary.get("timings", {}),
        breakdowns=summary.get("breakdowns"),
        text_queries=summary.get("text_queries"),
        versions=versions(),
    )
    return write_run(out.parent, record, outcomes, path=out)


# ---- sharded exact search (an Indexed Job per shard, then one merge; docs/deployment.md) -----
@app.command("search-shard")
def search_shard_command(
    queries: Optional[Path] = typer.Option(
        None, "--queries",
        help="queries .npy (N_q x D, float16/32) or embedding directory; omit with a gallery directory for intra",
    ),
    gallery: Path = typer.Option(
        ..., "--gallery",
        help="gallery .npy (N x D, float16/32, raw dot products) or embedding directory (parts allowed; "
             "normalised as `vsbench score` does), read memory-mapped",
    ),
    shard: str = typer.Option(..., "--shard", help="i/N: this process scores gallery rows [N_g*i//N, N_g*(i+1)//N)"),
    k: int = typer.Option(..., "--k", min=1, help="candidates kept per query"),
    out: Path = typer.Option(..., "--out", help="shard file (.npz) to write"),
    exclude: Optional[Path] = typer.Option(
        None, "--exclude", help="int .npy: per query a global gallery position never returned (intra self-match) or -1"
    ),
    engine: str = typer.Option("auto", help="GEMM engine: auto (calibrated), torch, numpy"),
) -> None:
    """Exact top-K of every query within one contiguous gallery shard; `vsbench search-merge`
    combines the shard files into the single-process result, and `vsbench score --ranked` scores
    it when the inputs were embedding directories."""
    from services.evaluator.sharded_search import Shard, open_search_inputs, search_shard, write_npz

    check_engine(engine)
    spec = Shard.parse(shard)
    if out.exists():
        fail(f"{out} already exists; results are never overwritten")
    inputs = open_search_inputs(queries, gallery, exclude)
    arrays = search_shard(inputs.queries, inputs.gallery, spec, k, exclude=inputs.exclude, engine=engine,
                          normalize=inputs.normalize)
    out.parent.mkdir(parents=True, exist_ok=True)  # the first of N pods to finish makes the shards folder
    write_npz(out, arrays)
    stderr_console().print(
        f"shard {spec.index}/{spec.count}: gallery rows {int(arrays['start'])}..{int(arrays['stop'])}, "
        f"{inputs.queries.shape[0]} queries, k={k} -> {out}",
        highlight=False,
    )


@app.command("search-merge")
def search_merge_command(
    parts: list[Path] = typer.Argument(..., help="every shard file of one search (part-*.npz), or their folder"),
    out: Path = typer.Option(
        ..., "--out", help="top-K file (.npz: indices, scores, and what the shards searched) to write"
    ),
) -> None:
    """Merge `vsbench search-shard` files into the final top-K (score desc, gallery position asc)."""
    from services.evaluator.sharded_search import merge_shard_files, shard_files, topk_arrays, write_npz

    if out.exists():
        fail(f"{out} already exists; results are never overwritten")
    files = shard_files(parts)
    top, facts = merge_shard_files(files)
    write_npz(out, topk_arrays(top, facts))
    stderr_console().print(f"merged {len(files)} shard files: {top.indices.shape[0]} queries, k={top.indices.shape[1]} -> {out}",
                  highlight=False)
