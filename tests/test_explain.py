"""Explanations without an encoder: the exact image decomposition, the modality split, the
ERASER bookkeeping, and the offline page (escaped text, "no image", checked in Chromium)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from browser import render_dom, require_chromium
from PIL import Image

from stages.attribution import (
    Explanation,
    as_double,
    cell_contributions,
    drop_words,
    log_prob,
    modality_shapley,
    word_spans,
)
from stages.explain_page import post_card, render
from stages.faithfulness import bootstrap, deletion_curve, drops, plan, summarise, top_k
from stages.model import FusionMLP, predict_proba

CLASSES = ["urgent_help", "relief_info", "misinformation", "irrelevant"]


def small_model(fusion: str = "gated", seed: int = 0) -> FusionMLP:
    torch.manual_seed(seed)
    module = FusionMLP({"text": 8, "image": 16}, 4, "both", fusion, (12, 6), 0.0)
    gen = torch.Generator().manual_seed(seed)
    module.set_standardisation(
        {
            "text": torch.randn(50, 8, generator=gen),
            "image": torch.randn(50, 16, generator=gen) * 2 + 1,
        }
    )
    return module.eval()


@pytest.mark.parametrize("fusion", ["gated", "concat"])
def test_cells_sum_exactly_to_the_gradient_term_and_track_the_real_difference(fusion) -> None:
    module = small_model(fusion)
    rng = np.random.default_rng(1)
    text, maps = rng.normal(size=8), rng.normal(size=(16, 7, 7)) * 2 + 1
    for target in range(4):
        cells, total = cell_contributions(module, text, maps, target, steps=8)
        assert cells.shape == (7, 7)
        assert abs(cells.sum() - total) < 1e-5
        # With many path points the gradient term is the real log-probability difference.
        _, fine = cell_contributions(module, text, maps, target, steps=512)
        m = as_double(module)
        t = torch.as_tensor(text)[None]
        v = torch.as_tensor(maps).mean(dim=(1, 2))[None]
        y = torch.tensor([target])
        with torch.no_grad():
            real = float(log_prob(m, t, v, y) - log_prob(m, t, m.image_mean[None], y))
        assert abs(fine - real) < 1e-3 * max(1.0, abs(real))


def test_the_image_at_the_training_mean_gets_no_contribution() -> None:
    module = small_model()
    maps = module.image_mean.double().numpy()[:, None, None] * np.ones((1, 7, 7))
    cells, total = cell_contributions(module, np.zeros(8), maps, 0, steps=4)
    assert np.abs(cells).max() < 1e-12 and abs(total) < 1e-12


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_modality_parts_sum_to_the_log_probability_difference(temperature: float) -> None:
    module = small_model()
    if hasattr(module, "temperature"):  # the calibrated probabilities predict shows
        module.temperature.fill_(temperature)
    rng = np.random.default_rng(2)
    text, image = rng.normal(size=(5, 8)), rng.normal(size=(5, 16))
    target = np.array([0, 1, 2, 3, 0])
    tp, ip = modality_shapley(module, text, image, target)
    m = as_double(module)
    y = torch.as_tensor(target)
    with torch.no_grad():
        full = log_prob(m, torch.as_tensor(text), torch.as_tensor(image), y)
        base = log_prob(m, m.text_mean.expand(5, -1), m.image_mean.expand(5, -1), y)
        proba = predict_proba(module, text, image)
    np.testing.assert_allclose(tp + ip, (full - base).numpy(), atol=1e-9)
    np.testing.assert_allclose(np.exp(full.numpy()), proba[np.arange(5), target], atol=1e-6)
    assert next(module.parameters()).dtype == torch.float32  # the model itself is untouched


def test_word_removal_deletes_words_and_keeps_the_rest_in_order() -> None:
    text = "Family  trapped on a roof,\tsend a boat"
    spans = word_spans(text)
    assert [text[s:e] for s, e in spans] == [
        "Family",
        "trapped",
        "on",
        "a",
        "roof,",
        "send",
        "a",
        "boat",
    ]
    keep = np.ones(len(spans), bool)
    keep[[1, 7]] = False
    assert drop_words(text, spans, keep) == "Family on a roof, send a"
    assert drop_words(text, spans, np.zeros(len(spans), bool)) == ""


def test_plan_caps_k_and_draws_random_units_reproducibly() -> None:
    scores = np.array([0.1, 0.9, -0.3])
    assert top_k(scores, 2).tolist() == [1, 0] and top_k(scores, 9).tolist() == [1, 0, 2]
    variants, masks = plan(scores, 5, 3, np.random.default_rng(0))
    assert masks.shape == (len(variants), 3) == (5 * 4 * 2, 3)
    again = plan(scores, 5, 3, np.random.default_rng(0))[1]
    np.testing.assert_array_equal(masks, again)
    attributed = [
        m
        for v, m in zip(variants, masks)
        if v.source == "attributed" and v.mode == "comprehensiveness" and v.k == 1
    ]
    assert attributed[0].tolist() == [True, False, True]
    # k >= n: every unit removed (comprehensiveness) or kept (sufficiency), whatever the source
    for v, m in zip(variants, masks):
        if v.k >= 3:
            assert m.all() if v.mode == "sufficiency" else not m.any()


def test_summary_separates_a_faithful_ranking_from_random() -> None:
    # A post whose probability is carried by unit 0 alone: removing it drops p by 0.8.
    def proba(masks: np.ndarray) -> np.ndarray:
        return np.where(masks[:, 0], 0.9, 0.1)

    rng = np.random.default_rng(0)
    good, shuffled = [], []
    for _ in range(30):
        n = 6
        scores = np.zeros(n)
        scores[0] = 1.0
        v, m = plan(scores, 5, 4, rng)
        good.append(drops(0.9, proba(m), v))
        v, m = plan(rng.normal(size=n), 5, 4, rng)  # negative control: scores that know nothing
        shuffled.append(drops(0.9, proba(m), v))
    ks = [1, 2, 3, 5]
    faithful = summarise(good, ks, 500, 0)
    assert faithful["comprehensiveness"]["attributed"]["mean"] == pytest.approx(0.8)
    assert faithful["comprehensiveness"]["attributed_minus_random"]["lo"] > 0.3
    assert faithful["sufficiency"]["attributed"]["mean"] == pytest.approx(0.0)
    control = summarise(shuffled, ks, 500, 0)["comprehensiveness"]["attributed_minus_random"]
    assert control["lo"] < 0 < control["hi"]
    curve = deletion_curve(good, 5)
    assert [r["k"] for r in curve] == [0, 1, 2, 3, 4, 5] and curve[1]["attributed"] == 0.8


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    values = np.random.default_rng(3).normal(1.0, 1.0, 200)
    a = bootstrap(values, 400, np.random.default_rng(7))
    assert a["lo"] < a["mean"] < a["hi"] and a == bootstrap(values, 400, np.random.default_rng(7))
    assert bootstrap(np.array([]), 10, np.random.default_rng(0))["mean"] is None


def explanation(text: str, has_image: bool, predicted: int = 1) -> Explanation:
    words = [text[s:e] for s, e in word_spans(text)]
    return Explanation(
        text,
        words,
        np.linspace(-1, 1, len(words)),
        np.array([0.1, 0.6, 0.2, 0.1]),
        predicted,
        0.3,
        0.1,
        has_image,
        np.arange(49.0).reshape(7, 7) - 20 if has_image else None,
    )


def page(tmp_path) -> tuple[str, object]:
    hostile = 'Help <script>alert("x")</script> & <b>now</b> "quoted" <img src=x onerror=1>'
    cards = [
        (
            True,
            post_card(
                explanation(hostile, True),
                7,
                "relief_info",
                CLASSES,
                Image.new("RGB", (80, 60), (40, 90, 200)),
                224 / 256,
            ),
        ),
        (
            False,
            post_card(
                explanation("roof collapsed send help", False),
                "8<i>",
                "urgent_help",
                CLASSES,
                None,
                1.0,
            ),
        ),
    ]
    report = {
        "posts": 2,
        "k": [1, 2],
        "methods": {"text": "occlusion", "image": "feature_map"},
        "text": {"posts": 0},
    }
    html = render(cards, report)
    path = tmp_path / "index.html"
    path.write_text(html, encoding="utf-8")
    return html, path


def test_page_escapes_post_text_and_fetches_nothing(tmp_path) -> None:
    html, _ = page(tmp_path)
    assert "<script" not in html.lower() and "<b>now" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)
    assert "no image" in html and "predicted <b>relief_info</b>" in html
    assert "Correct predictions" in html and "Wrong predictions" in html


def test_page_draws_offline_in_chromium(tmp_path) -> None:
    require_chromium()
    _, path = page(tmp_path)
    dom = render_dom(path)
    # The hostile text is shown as text: no script or injected element came alive.
    assert "<script" not in dom.lower() and "onerror" not in dom.split("&lt;img")[0]
    assert "&lt;script&gt;alert" in dom and "no image" in dom
    images = re.findall(r'<img[^>]*src="(data:image/png;base64,[^"]+)"', dom)
    assert len(images) == 1
    assert dom.count('<span style="background:') >= 10  # one shaded span per word


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("n_posts", 0, "explain.n_posts=0 must be in [1, inf]"),
        ("k", [], "explain.k must list at least one"),
        ("k", [0, 2], "explain.k[0]=0 must be in [1, inf]"),
        ("steps", "many", "explain.steps='many' must be int"),
    ],
)
def test_bad_explain_params_are_refused_naming_the_key(
    tmp_path, monkeypatch, key, value, message
) -> None:
    import yaml

    from stages import explain
    from stages.params import ParamsError

    cfg = {
        "method": "auto",
        "n_posts": 10,
        "steps": 4,
        "k": [1, 2],
        "random_draws": 2,
        "bootstrap": 10,
        "page_posts": 2,
        "seed": 0,
        key: value,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"explain": cfg}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=re.escape(message)):
        explain.main()
    good = {
        "method": "auto",
        "n_posts": 10,
        "steps": 4,
        "k": [1, 2],
        "random_draws": 2,
        "bootstrap": 10,
        "page_posts": 2,
    }  # no seed: the missing key is named
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"explain": good}))
    with pytest.raises(ParamsError, match="missing key 'explain.seed'"):
        explain.main()
