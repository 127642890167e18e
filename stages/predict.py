"""predict: classify new posts with the trained model, through the prepare stage's own text and
image functions, with the input settings and the encoder the model was trained with (both from
models/model.json: params.yaml's prepare block is not read).

  python -m stages.predict --text "Family trapped on a roof, send a boat" [--image photo.jpg]
  python -m stages.predict --csv posts.csv --out predictions.csv   # columns text,image_path[,label]
"""

from __future__ import annotations

import json
import logging
import tempfile
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

import pandas as pd

from stages import config, csvsafe
from stages.config import FeaturizeConfig
from stages.embedding import embed
from stages.encoders import Encoder, EncoderError, load_rgb
from stages.explain_page import describe
from stages.feature_store import ShardReader
from stages.images import ImageDecodeError, ImageStore
from stages.model import FusionMLP, predict_proba
from stages.params import ParamsError
from stages.predictor import PredictError, load_predictor, read_posts
from stages.report import report_csv
from stages.text import clean_text

log = logging.getLogger("predict")


def classify(
    posts: pd.DataFrame,
    image_root: Path,
    module: FusionMLP,
    encoder: Encoder,
    cfg: FeaturizeConfig,
    model_meta: dict[str, Any],
    explain: config.ExplainConfig | None = None,
) -> pd.DataFrame:
    """`posts` + image_status, predicted, prob_<class>: each text and image (under image_root)
    cleaned and stored as prepare did for the model's training data (model.json's `input`:
    white dummy if unusable), embedded as featurize does. With `explain`, also `explanation`:
    the explain stage's attributions of each prediction, as JSON."""
    prep, classes = model_meta["input"], list(model_meta["classes"])
    with tempfile.TemporaryDirectory(prefix="crisis-mm-predict-") as work:
        store = ImageStore(Path(work) / "images", prep["max_side"], prep["dummy_size"])
        stored = [store.get([path], image_root) for path in posts["image_path"]]
        frame = pd.DataFrame(
            {
                "text": [clean_text(t, prep["strip_urls"]) for t in posts["text"]],
                "image": [f"{store.staging}/{s.digest}.jpg" for s in stored],
            }
        )
        shards, size = Path(work) / "shards", cfg.shard_size
        texts, images = embed({"posts": frame}, encoder, cfg, shards)
        text = ShardReader(shards, "text", size, encoder.text_dim).rows(texts.rows["posts"])
        image = ShardReader(shards, "image", size, encoder.image_dim).rows(images.rows["posts"])
        if explain is not None:
            from stages.attribution import Explainer  # captum: only when asked

            explainer = Explainer(module, encoder, explain.method, explain.steps)
            pixels = [encoder.preprocess(load_rgb(Path(f))) for f in frame["image"]]
            found = explainer.explain(list(frame["text"]), pixels, [not s.problem for s in stored])
    proba = predict_proba(module, text, image)
    out = posts.copy()
    out["image_status"] = [f"white_dummy:{s.problem}" if s.problem else "ok" for s in stored]
    out["predicted"] = [classes[k] for k in proba.argmax(axis=1)]
    for k, name in enumerate(classes):
        out[f"prob_{name}"] = proba[:, k].round(6)
    if explain is not None:
        out["explanation"] = [json.dumps(e.to_json(classes)) for e in found]
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="one post's text")
    given.add_argument("--csv", type=Path, help="posts to classify: text,image_path[,label]")
    parser.add_argument("--image", type=Path, help="the --text post's image (default: none)")
    parser.add_argument("--out", type=Path, help="where --csv writes its predictions")
    parser.add_argument("--image-root", type=Path, help="root of image_path (default: CSV's)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also say which words and image regions drove each prediction",
    )
    args = parser.parse_args(argv)
    if (args.csv is None) != (args.out is None) or (args.image if args.csv else args.image_root):
        parser.error("--csv needs --out and may take --image-root; --text may take --image")
    try:
        cfg = config.load(config.FeaturizeStage, args.params).featurize
        how = config.load(config.ExplainStage, args.params).explain if args.explain else None
        if args.csv:
            posts, root = read_posts(args.csv), args.image_root or args.csv.parent
        else:  # the image's own folder is its root: any file the user names may be read
            path = args.image.resolve() if args.image else None
            name, root = (path.name, path.parent) if path else ("", Path.cwd())
            posts = pd.DataFrame({"text": [args.text], "image_path": [name]})
        module, meta, encoder = load_predictor(cfg, args.model_dir)
        result = classify(posts, root, module, encoder, cfg, meta, how)
    except (PredictError, ParamsError, EncoderError, ImageDecodeError, FileNotFoundError) as exc:
        raise SystemExit(f"predict: error: {exc}") from None
    if args.csv:
        csvsafe.write_csv(result, args.out)
        return report_csv(result, list(meta["classes"]), args.out)
    print(
        f"predicted: {result['predicted'][0]}",
        *(f"  {name:<16}{result[f'prob_{name}'][0]:.4f}" for name in meta["classes"]),
        sep="\n",
    )
    status = result["image_status"][0]
    print(f"image: {status}" + ("" if status == "ok" else " (no usable image: prepare's dummy)"))
    if args.explain:
        print(describe(json.loads(result["explanation"][0])))


if __name__ == "__main__":
    main()
