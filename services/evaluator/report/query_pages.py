"""Per-query pages: failure galleries (failures/<d>/<m>.html), model-vs-model contrasts
(compare/<d>/<a>--<b>.html) and the queries no model solves (hard/<d>.html)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.evaluator.report import charts
from services.evaluator.report.data import RunQueries, hub_images, missed_at_1, oracle_summary, right_wrong
from services.evaluator.report.page_writer import PageWriterBase


class QueryPages(PageWriterBase):
    def _thumb(self, dataset: str, image_id: str) -> dict[str, Any]:
        src = self.ctx.thumbs.url(dataset, image_id)
        return {"id": image_id, "src": src, "placeholder": self.ctx.thumbs.is_placeholder(src)}

    def _query_card(self, dataset: str, q: RunQueries, i: int) -> dict[str, Any]:
        top = []
        for rank, (gid, score, relevant) in enumerate(
            zip(q.top_ids[i], q.top_scores[i], q.top_relevant[i]), 1
        ):
            top.append({**self._thumb(dataset, gid), "rank": rank, "score": score, "relevant": relevant})
        margin = q.margin[i]
        return {
            **self._thumb(dataset, q.query_ids[i]),
            "product": q.product_ids[i],
            "n_relevant": int(q.n_relevant[i]),
            "rank": int(q.first_rank[i]),
            "depth": q.depth,
            "margin": None if math.isnan(margin) else float(margin),
            "margin_bound": bool(q.margin_is_bound[i]),
            "top": top,
        }

    def failure_page(self, dataset: str, model: str) -> None:
        ctx = self.ctx
        q = ctx.queries.get((dataset, model))
        if q is None:
            return
        missed = missed_at_1(q)
        scored = q.scored & q.answerable
        hits = scored & (q.first_rank == 1)
        hubs = [{**self._thumb(dataset, gid), "count": count} for gid, count in hub_images(q)]
        histogram = charts.histogram_chart(
            [
                ("top-1 correct", q.top1_score[hits].tolist(), "#009E73"),
                ("top-1 wrong", q.top1_score[scored & ~hits].tolist(), "#D55E00"),
            ],
            title=f"Top-1 similarity of {model} on {dataset}",
            x_label="top-1 score (dot product)",
            y_label="queries",
        )
        beyond = int((scored & ((q.first_rank == 0) | (q.first_rank > 5))).sum())
        others = [m for m in sorted(ctx.dataset_queries(dataset)) if m != model]
        self._write(
            self.failure_href(dataset, model),
            "failures.html",
            title=f"{model} misses on {dataset}",
            dataset=dataset,
            model=model,
            dataset_href=self.dataset_href(dataset),
            model_href=self.model_href(model),
            n_scored=int(scored.sum()),
            n_missed=int(missed.size),
            n_beyond5=beyond,
            cards=[self._query_card(dataset, q, int(i)) for i in missed[: ctx.options.max_failures]],
            hubs=hubs,
            histogram=histogram,
            depth=q.depth,
            compare=[{"other": m, "href": self.compare_href(dataset, model, m)} for m in others],
        )

    def compare_page(self, dataset: str, a: str, b: str) -> None:
        ctx = self.ctx
        qa, qb = ctx.queries[(dataset, a)], ctx.queries[(dataset, b)]
        a_right, b_right, n_common = right_wrong(qa, qb)  # positions in qa / in qb

        def section(
            winner: str, loser: str, qw: RunQueries, ql: RunQueries, wins: np.ndarray
        ) -> dict[str, Any]:
            ids = [qw.query_ids[i] for i in wins]
            loser_pos = np.array([ql.index[q] for q in ids], dtype=np.int64)
            # Most confident wrong answers of the loser first: the sharpest contrasts.
            margin = np.nan_to_num(ql.margin[loser_pos], nan=-np.inf) if ids else np.zeros(0)
            order = np.lexsort((np.arange(len(ids)), -margin))[: ctx.options.max_compare]
            return {
                "winner": winner,
                "loser": loser,
                "count": len(ids),
                "queries": [
                    {
                        "winner": self._query_card(dataset, qw, int(wins[k])),
                        "loser": self._query_card(dataset, ql, int(loser_pos[k])),
                    }
                    for k in order
                ],
            }

        test = ctx.pairs.get((dataset, "recall@1"), {}).get((a, b))
        self._write(
            self.compare_href(dataset, a, b),
            "compare.html",
            title=f"{a} vs {b} on {dataset}",
            dataset=dataset,
            a=a,
            b=b,
            dataset_href=self.dataset_href(dataset),
            n_common=n_common,
            sections=[section(a, b, qa, qb, a_right), section(b, a, qb, qa, b_right)],
            test=None
            if test is None
            else {
                "p": test.result.p_value,
                "p_holm": test.p_holm,
                "method": test.result.method,
                "diff": test.result.diff * 100,
            },
            a_href=self.failure_href(dataset, a),
            b_href=self.failure_href(dataset, b),
        )

    def hard_page(self, dataset: str) -> None:
        ctx = self.ctx
        per_model = ctx.dataset_queries(dataset)
        n_common, hard_ids, oracle = oracle_summary(per_model)
        items = []
        names = sorted(per_model)
        for qid in hard_ids[: ctx.options.max_failures]:
            first = per_model[names[0]]
            i = first.index[qid]
            answers = []
            for name in names:
                q = per_model[name]
                j = q.index[qid]
                top = q.top_ids[j][0] if q.top_ids[j] else None
                answers.append(
                    {
                        "model": name,
                        "rank": int(q.first_rank[j]),
                        "depth": q.depth,
                        "top": self._thumb(dataset, top) if top else None,
                        "score": q.top_scores[j][0] if q.top_scores[j] else None,
                    }
                )
            items.append({**self._thumb(dataset, qid), "product": first.product_ids[i], "answers": answers})
        self._write(
            f"hard/{ctx.dslug[dataset]}.html",
            "hard.html",
            title=f"Queries no model solves on {dataset}",
            dataset=dataset,
            dataset_href=self.dataset_href(dataset),
            n_common=n_common,
            n_hard=len(hard_ids),
            oracle=oracle,
            items=items,
            models=names,
        )
