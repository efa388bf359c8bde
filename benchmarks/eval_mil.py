"""Ablation of the weakly supervised mitosis map (docs/mil.md): Table 2 and the number of stages (Fig. 3).

Every configuration is trained from scratch with the same data, seed and
number of steps (a short, equal budget on one CPU thread), then scored on the
held-out MITOS-ATYPIA-14 frame groups and AMi-Br slides exactly as the shipped
model: image-level F1 at the ROC operating point chosen on validation, and
localisation F1 (centroids of the thresholded, up-sampled map, one-to-one
within 7.5 um, micro) on the test frames.

    .venv/bin/python benchmarks/eval_mil.py --steps 600 [--data ../shared/data] [--runs DIR]

Writes ``benchmarks/mil_results.json`` and the tables between the
``<!-- mil-tables -->`` markers of ``docs/mil.md``. Runs resume: a
configuration whose ``results.json`` exists in ``--runs`` is not retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mitosis.training.train_mil import (
    TrainConfig,
    default_stain,
    load_items,
    reevaluate,
    train_task,
)
from napari_mitosis.pipeline.progress import run

ABLATION = [("embedding_mean", 3), ("embedding_max", 3), ("attention", 3), ("instance_mean", 3), ("instance_max", 3)]
STAGES = [("instance_max", 1), ("instance_max", 2), ("instance_max", 3), ("instance_max", 4)]
PAPER_T2 = {"embedding_mean": (0.762, 0.134), "embedding_max": (0.772, 0.234), "attention": (0.768, 0.014),
            "instance_mean": (0.753, 0.004), "instance_max": (0.761, 0.729)}
NAMES = {"embedding_mean": "embedding - mean", "embedding_max": "embedding - max", "attention": "attention MIL",
         "instance_mean": "instance - mean", "instance_max": "instance - max"}


def tables(results: dict) -> str:
    out = []
    steps = results["steps"]
    out.append(f"Each row: trained from scratch, {steps} steps of batch 32 (seed {results['seed']}), 1 CPU thread; "
               f"{results['budget_note']}\n")
    out.append("**Table 2 (aggregation), three residual stages**\n")
    out.append("| configuration | image F1 (test) | image AUC (test) | localisation F1 (test) | loc. precision | loc. recall | "
               "threshold (val ROC) | paper image F1 | paper loc. F1 |\n|---|---|---|---|---|---|---|---|---|")
    for mode, st in ABLATION:
        r = results["runs"].get(f"{mode}-s{st}")
        if not r:
            continue
        ti, tl = r["test_image"], r["test_localisation"]
        pi, pl = PAPER_T2[mode]
        out.append(f"| {NAMES[mode]} | {ti['f1']:.3f} | {ti['auc']:.3f} | {tl['f1']:.3f} | {tl['precision']:.3f} | "
                   f"{tl['recall']:.3f} | {r['threshold']:.3f} | {pi:.3f} | {pl:.3f} |")
    out.append("")
    out.append("**Number of residual stages (the paper's Fig. 3), instance - max**\n")
    out.append("| stages | map stride (px at 0.5 um/px) | receptive field (px) | parameters | image F1 (test) | "
               "localisation F1 (test) | loc. precision | loc. recall |\n|---|---|---|---|---|---|---|---|")
    for mode, st in STAGES:
        r = results["runs"].get(f"{mode}-s{st}")
        if not r:
            continue
        ti, tl = r["test_image"], r["test_localisation"]
        out.append(f"| {st} | {2 ** (st + 1)} | {r['receptive_field']} | {r['parameters']:,} | {ti['f1']:.3f} | {tl['f1']:.3f} | "
                   f"{tl['precision']:.3f} | {tl['recall']:.3f} |")
    out.append("")
    return "\n".join(out)


def write_doc(results: dict, doc: Path) -> None:
    if not doc.exists():
        return
    text = doc.read_text()
    a, b = "<!-- mil-tables -->", "<!-- /mil-tables -->"
    if a in text and b in text:
        head, rest = text.split(a, 1)
        _, tail = rest.split(b, 1)
        doc.write_text(head + a + "\n" + tables(results) + "\n" + b + tail)


def main(argv=None) -> int:
    from napari_mitosis.models.mil import n_parameters, receptive_field

    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default="/tmp/mil-ablation")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch sampling seed")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the slide/image split (keep 0 to compare seeds)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--only", nargs="*", help="run only these keys (e.g. attention-s3)")
    p.add_argument("--reevaluate", action="store_true", help="score finished runs again (no training)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "mil_results.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "mil.md"))
    a = p.parse_args(argv)
    stain = default_stain(a.data)
    items = load_items(a.data, stain=stain, seed=a.split_seed, log=print)
    path = Path(a.json)
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results.update(steps=a.steps, seed=a.seed, width=a.width,
                   budget_note="a short budget of equal steps for every configuration, far from the paper's 40 epochs "
                               "from ImageNet weights: compare the rows with each other, not with the paper's numbers")
    for mode, st in dict.fromkeys(ABLATION + STAGES):
        key = f"{mode}-s{st}"
        if a.only and key not in a.only:
            continue
        out = Path(a.runs) / key
        done = out / "results.json"
        if not done.exists():
            t = time.time()
            cfg = TrainConfig(data=a.data, out=str(out), mode=mode, stages=st, width=a.width, max_steps=a.steps,
                              threads=a.threads, seed=a.seed, resume=True, ckpt_every=200,
                              command=f"benchmarks/eval_mil.py --steps {a.steps}")
            net, _ = run(train_task(cfg, items=items, log=lambda m, k=key: print(f"{k}: {m}", flush=True)))
            print(f"{key}: {time.time() - t:.0f} s", flush=True)
        elif a.reevaluate:
            reevaluate(out, items, log=lambda m, k=key: print(f"{k}: re-evaluated: {m}", flush=True))
        r = json.loads(done.read_text())
        from napari_mitosis.models.mil import build_mil

        r["parameters"] = n_parameters(build_mil(st, a.width, mode))
        r["receptive_field"] = receptive_field(st)
        r.pop("config", None)
        results["runs"][key] = r
        path.write_text(json.dumps(results, indent=2))
        write_doc(results, Path(a.doc))
    print(tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
