"""explain stage: which words and image regions drove each test prediction, and how faithful
those explanations are.

Reads `explain.*`, the trained model, the encoder it was trained with and the test split;
writes reports/explain.json (ERASER comprehensiveness/sufficiency beside random removal, with
bootstrap intervals; text/image share per class), reports/explain/index.html (explained
posts, offline) and reports/explain/deletion.csv (the deletion curve, a DVC plot). Methods
and removal rules: stages/attribution.py; metrics: stages/faithfulness.py.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages import config, csvsafe
from stages.attribution import Explainer
from stages.encoders import load_encoder, load_rgb
from stages.explain_page import post_card, render
from stages.faithfulness import measure, select_posts, share_by_class
from stages.files import write_json, write_text
from stages.images import encode_jpeg, white_image
from stages.model import load_model, read_features

log = logging.getLogger("explain")
DATASET, REPORTS = Path("dataset"), Path("reports")


def explain_posts(
    posts: pd.DataFrame,
    explainer: Explainer,
    dummy: str,
    classes: list[str],
    cfg: config.ExplainConfig,
) -> tuple[dict, list[dict], str]:
    """The core: (explain.json content, deletion curve rows, page html) for `posts`
    (columns id, text, image_path relative to dataset/, label)."""
    images = [load_rgb(DATASET / p) for p in posts["image_path"]]
    has_image = [Path(p).stem != dummy for p in posts["image_path"]]
    exps = explainer.explain(
        list(posts["text"]), [explainer.encoder.preprocess(i) for i in images], has_image
    )
    ks = list(cfg.k)
    faith, curve = measure(exps, explainer, ks, cfg.random_draws, cfg.bootstrap, cfg.seed)
    report = {
        "posts": len(exps),
        "posts_with_image": int(sum(has_image)),
        "k": ks,
        "random_draws": cfg.random_draws,
        "methods": {
            "text": explainer.text_method,
            "image": explainer.image_method,
            "word_removal": "deleted from the text, re-encoded",
            "region_removal": explainer.image_removal,
        },
        "text": faith["text"],
        "image": faith["image"],
        "share": share_by_class(exps, classes),
        "accuracy_of_explained": round(
            float(np.mean([classes[e.predicted] == a for e, a in zip(exps, posts["label"])])), 4
        ),
    }
    correct = [i for i, (e, a) in enumerate(zip(exps, posts["label"])) if classes[e.predicted] == a]
    wrong = [i for i in range(len(exps)) if i not in set(correct)]
    half = cfg.page_posts // 2
    # Evenly spread over the file, so every source shows up, correct and wrong alike.
    shown = [
        (ok, group[int(j)])
        for ok, group in ((True, correct), (False, wrong))
        if group
        for j in np.unique(np.linspace(0, len(group) - 1, min(half, len(group))).round())
    ]
    cards = [
        (
            ok,
            post_card(
                exps[i],
                posts["id"].iloc[i],
                posts["label"].iloc[i],
                classes,
                images[i],
                explainer.view_fraction,
            ),
        )
        for ok, i in shown
    ]
    return report, curve, render(cards, report)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage = config.load(config.ExplainStage)  # checked before anything loads
    cfg = stage.explain
    module, meta = load_model(Path("models"))
    classes = list(meta["classes"])
    features_meta = json.loads(Path("features/meta.json").read_text(encoding="utf-8"))
    if features_meta.get("fingerprint") != meta.get("fingerprint"):
        raise ValueError("models/model.json was trained on other features; re-run train")
    stored = read_features(Path("features/test.safetensors"), len(classes), meta["dims"])
    posts = csvsafe.read_csv(DATASET / "test_balanced.csv", int_columns=())
    if sorted(posts["id"].astype(np.int64)) != sorted(stored["id"].tolist()):
        raise ValueError(
            "dataset/test_balanced.csv and features/test.safetensors hold other "
            "posts; re-run featurize"
        )
    posts = select_posts(posts, cfg.n_posts, cfg.seed)
    start = time.perf_counter()
    encoder = load_encoder(stage.featurize)
    if encoder.fingerprint() != meta.get("fingerprint"):
        raise ValueError(
            f"the featurize settings give encoder {encoder.name!r} with another "
            "fingerprint than models/model.json's; re-run the pipeline"
        )
    explainer = Explainer(module, encoder, cfg.method, cfg.steps)
    loaded = time.perf_counter()
    dummy = encode_jpeg(white_image(stage.prepare.dummy_size))[0]
    report, curve, page = explain_posts(posts, explainer, dummy, classes, cfg)
    done = time.perf_counter()
    write_json(REPORTS / "explain.json", report)
    csvsafe.write_csv(pd.DataFrame(curve), REPORTS / "explain" / "deletion.csv")
    write_text(REPORTS / "explain" / "index.html", page)
    t, i = report["text"], report["image"]
    print(
        f"explain: {len(posts)} posts ({report['posts_with_image']} with an image), "
        f"{explainer.text_method} / {explainer.image_method}; encoder load "
        f"{loaded - start:.1f} s, explain + faithfulness {done - loaded:.1f} s "
        f"({(done - loaded) / max(1, len(posts)):.3f} s a post; attributions alone: text "
        f"{explainer.seconds['text'] / max(1, len(posts)):.3f} s, image "
        f"{explainer.seconds['image'] / max(1, report['posts_with_image']):.4f} s a post)"
    )
    for name, part in (("text", t), ("image", i)):
        for mode in ("comprehensiveness", "sufficiency"):
            if part["posts"]:
                d = part[mode]["attributed_minus_random"]
                print(
                    f"  {name:<5} {mode:<17} attributed {part[mode]['attributed']['mean']:.4f}"
                    f"  random {part[mode]['random']['mean']:.4f}  diff {d['mean']:+.4f} "
                    f"[{d['lo']:+.4f}, {d['hi']:+.4f}]  n={part['posts']}"
                )


if __name__ == "__main__":
    main()
