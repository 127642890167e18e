"""Word attributions through real encoders: a planted word must be found, and must be what the
model needs (ERASER against random), by integrated gradients through the real MiniLM and by
occlusion (also through a tiny CLIP); a re-initialised MLP must explain differently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from shipped_params import featurize_cfg
from tiny_models import save_tiny_clip

from stages.attribution import Explainer
from stages.encoders import load_encoder
from stages.faithfulness import measure
from stages.model import FusionMLP

KEY = "rescue"
FILLER = (
    "the a in of on is are we our city road bridge photo storm water food people shelter fire"
).split()


def planted_posts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Filler sentences; every odd post has KEY at a random place, and only KEY decides."""
    rng = np.random.default_rng(seed)
    texts, labels = [], np.arange(n) % 2
    for label in labels:
        words = list(rng.choice(FILLER, size=int(rng.integers(5, 9))))
        if label:
            words.insert(int(rng.integers(0, len(words) + 1)), KEY)
        texts.append(" ".join(words))
    return texts, labels


def train_planted(encoder, seed: int = 0) -> FusionMLP:
    texts, labels = planted_posts(160, seed)
    x = torch.as_tensor(encoder.encode_text(texts))
    y = torch.as_tensor(labels)
    torch.manual_seed(seed)
    module = FusionMLP(
        {"text": encoder.text_dim, "image": encoder.image_dim}, 2, "text", "concat", (32, 16), 0.0
    )
    module.set_standardisation({"text": x})
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(text=x), y).backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        assert (module(text=x).argmax(1) == y).float().mean() == 1.0
    return module


@pytest.fixture(scope="module")
def offline():
    # 64 px images: the text is what these tests are about; fp32 for stable gradients.
    return load_encoder(
        featurize_cfg({"encoder": "offline", "offline": {"image_size": 64, "bf16": False}}),
        torch.device("cpu"),
    )


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    return load_encoder(
        featurize_cfg({"encoder": "clip", "clip": {"model": str(path)}}), torch.device("cpu")
    )


@pytest.fixture(scope="module")
def planted(offline) -> FusionMLP:
    return train_planted(offline)


@pytest.fixture(scope="module")
def held_out():
    texts, labels = planted_posts(24, seed=99)
    return [t for t, y in zip(texts, labels) if y]  # the posts that hold the planted word


def explain(module, encoder, texts, method="auto", steps=16):
    explainer = Explainer(module, encoder, method, steps=steps)
    pixels = [encoder.preprocess(Image.new("RGB", (40, 40), (90, 90, 90))) for _ in texts]
    return explainer, explainer.explain(texts, pixels, [True] * len(texts))


def first_word_rate(exps) -> float:
    return float(np.mean([e.words[int(np.argmax(e.word_scores))] == KEY for e in exps]))


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_planted_word_ranks_first_and_beats_random_removal(
    offline, planted, held_out, method
) -> None:
    module = planted
    explainer, exps = explain(module, offline, held_out, method)
    assert explainer.text_method == method
    assert all(e.predicted == 1 for e in exps)
    assert first_word_rate(exps) >= 0.9
    report, curve = measure(exps, explainer, [1, 2, 3, 5], draws=5, n_boot=500, seed=0)
    comp = report["text"]["comprehensiveness"]
    assert report["text"]["posts"] == len(held_out)
    assert comp["attributed"]["mean"] > 0.8  # removing KEY takes the class away
    assert comp["attributed_minus_random"]["lo"] > 0.3
    assert report["text"]["sufficiency"]["attributed_minus_random"]["hi"] < 0
    assert report["image"]["posts"] == 0  # a text-only model: no image to explain
    assert curve[1]["text_attributed"] > curve[1]["text_random"] + 0.5


def test_integrated_gradients_go_through_the_same_vectors_as_the_encoder(offline) -> None:
    st = offline.text_model
    texts = ["people trapped on the roof, send a boat", "RT @x: 🙏 pray"]
    tok = st.tokenizer(
        texts, padding=True, truncation=True, max_length=st.max_seq_length, return_tensors="pt"
    )
    with torch.no_grad():
        ours = st(dict(tok))["sentence_embedding"].numpy()
    np.testing.assert_allclose(ours, offline.encode_text(texts), atol=1e-5)


def test_a_reinitialised_mlp_explains_differently(offline, planted, held_out) -> None:
    trained = planted
    random_mlp = FusionMLP(
        {"text": offline.text_dim, "image": offline.image_dim}, 2, "text", "concat", (32, 16), 0.0
    )
    random_mlp.load_state_dict(
        {k: v for k, v in trained.state_dict().items() if "mean" in k or "std" in k}, strict=False
    )  # same standardisation only
    _, a = explain(trained, offline, held_out)
    _, b = explain(random_mlp.eval(), offline, held_out)
    rho = [spearmanr(x.word_scores, y.word_scores)[0] for x, y in zip(a, b)]
    assert np.nanmean(rho) < 0.5
    assert first_word_rate(b) < 0.9 <= first_word_rate(a)


def test_explanations_and_metrics_repeat_with_the_seed(offline, planted, held_out) -> None:
    module = planted
    e1, a = explain(module, offline, held_out[:5])
    e2, b = explain(module, offline, held_out[:5])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.word_scores, y.word_scores)
    r1 = measure(a, e1, [1, 2], 3, 200, seed=5)
    assert r1 == measure(b, e2, [1, 2], 3, 200, seed=5)
    other = measure(a, e1, [1, 2], 3, 200, seed=6)[0]["text"]["comprehensiveness"]
    assert other["random"] != r1[0]["text"]["comprehensiveness"]["random"]


def test_occlusion_through_a_tiny_clip_scores_words_and_maps_regions(tiny_clip) -> None:
    # A random tiny CLIP carries a word only weakly, so this checks the method, not a plant.
    module = FusionMLP({"text": tiny_clip.text_dim, "image": tiny_clip.image_dim}, 2).eval()
    texts = ["people trapped on the bridge please send rescue", "fire in the city"]
    explainer, exps = explain(module, tiny_clip, texts)
    assert (explainer.text_method, explainer.image_method) == ("occlusion", "occlusion")
    e = exps[0]
    # A word's score is log p(post) - log p(post without that word), the word deleted.
    without = tiny_clip.encode_text(["people trapped on the bridge send rescue"])
    logp = np.log(
        explainer.target_proba(
            np.stack([e.text_vec, without[0]]), np.stack([e.image_vec] * 2), e.predicted
        )
    )
    assert e.word_scores[5] == pytest.approx(logp[0] - logp[1], abs=1e-5)
    assert e.regions.shape == (7, 7) and np.abs(e.regions).max() > 0
    kept = explainer.region_vectors(e.image_view, np.ones((1, 49), bool))
    np.testing.assert_allclose(kept[0], e.image_vec, atol=1e-5)
    assert (
        np.abs(
            explainer.region_vectors(e.image_view, np.eye(49, dtype=bool)[:3]) - e.image_vec
        ).max()
        > 1e-4
    )


def test_feature_map_regions_come_from_the_encoders_own_map(offline) -> None:
    module = FusionMLP({"text": offline.text_dim, "image": offline.image_dim}, 2).eval()
    module.image_mean.copy_(torch.linspace(0, 1, offline.image_dim))
    explainer = Explainer(module, offline)
    assert explainer.image_method == "feature_map"
    pixels = offline.preprocess(Image.linear_gradient("L").convert("RGB"))
    vector, maps = explainer.image_view(pixels)
    np.testing.assert_array_equal(vector, offline.encode_images(pixels[None])[0])
    cells = maps.shape[1] * maps.shape[2]
    kept = explainer.region_vectors(maps, np.ones((1, cells), bool))
    np.testing.assert_allclose(kept[0], vector, atol=1e-5)
    gone = explainer.region_vectors(maps, np.zeros((1, cells), bool))
    np.testing.assert_allclose(gone[0], module.image_mean.numpy(), atol=1e-6)
    # Occlusion with this encoder removes the same cells: its score is that removal's drop.
    occlusion = Explainer(module, offline, "occlusion")
    assert (occlusion.image_method, occlusion.image_removal) == (
        "occlusion",
        "feature_cell_to_training_mean",
    )
    text = np.zeros(offline.text_dim, np.float32)
    scores = occlusion.region_scores(maps, text, vector, 0)
    assert scores.shape == maps.shape[1:]
    one = np.ones((1, cells), bool)
    one[0, 0] = False
    logp = np.log(
        occlusion.target_proba(
            np.stack([text] * 2),
            np.concatenate([vector[None], occlusion.region_vectors(maps, one)]),
            0,
        )
    )
    assert scores[0, 0] == pytest.approx(logp[0] - logp[1], abs=1e-6)
