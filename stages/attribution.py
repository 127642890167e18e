"""Why the model chose its class: word scores, image region maps and the text/image share.

Every score explains the log-probability of the predicted class (the logit minus the
log-sum-exp, so a shift common to all classes counts for nothing), through the model's own
input path: encoder vectors -> FusionMLP (its standardisation buffers included).

- Words are the whitespace-separated words of the cleaned text, what a person reads.
  - `integrated_gradients` (offline encoder): Captum's LayerIntegratedGradients on MiniLM's
    word-embedding layer, through the real MiniLM (mean pooling, L2 norm) and the MLP; the
    baseline replaces every real token by [PAD] (CLS/SEP and the attention mask kept);
    sub-word token scores are summed into their word.
  - `occlusion` (any encoder): the drop in log-probability when the word is removed.
- Removing a word means deleting it from the text and re-encoding the rest (`drop_words`),
  everywhere (occlusion, faithfulness metrics, tests): it works for every encoder, even one
  that takes no attention mask (SigLIP), and it is what a reader means by "without that word".
- Image regions: a grid over the picture the encoder sees.
  - `feature_map` (offline encoder): EfficientNet-Lite0's vector is the mean of its last 7x7
    map, so a cell c contributes exactly g . (F_c - mu) / 49 to g . (v - mu), where mu is the
    training mean (the MLP's image_mean) and g the gradient of the log-probability with
    respect to the pooled vector, averaged along the straight path mu -> v (`steps` points:
    integrated gradients in the pooled space, so g . (v - mu) tracks the real difference
    log p(v) - log p(mu)).
  - `occlusion`: the drop in log-probability when the region is removed. Removal depends on
    the encoder only, never on the method: with the offline encoder a region is a map cell,
    replaced by mu (exact and free); with other encoders a block of a 7x7 grid over the
    pixels, set to 0 in the encoder's normalised pixel space (the data mean colour for
    CLIP/SigLIP), then re-encoded.
- Share: the two-player Shapley split of log p(t, i) - log p(mu_t, mu_i) between the text
  and the image (4 MLP calls, exact: the two parts sum to that difference).
"""

from __future__ import annotations

import bisect
import copy
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stages.encoders import Encoder
from stages.encoders.offline import CROP_PADDING, LitePreprocess
from stages.model import FusionMLP

WORD = re.compile(r"\S+")
METHODS = ("auto", "integrated_gradients", "occlusion")


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


def drop_words(text: str, spans: list[tuple[int, int]], keep: np.ndarray) -> str:
    """The text with only the kept words, joined by single spaces (the one removal rule)."""
    return " ".join(text[s:e] for (s, e), k in zip(spans, keep) if k)


@dataclass
class Explanation:
    text: str
    words: list[str]
    word_scores: np.ndarray  # one per word
    proba: np.ndarray  # class probabilities of the full post
    predicted: int
    text_part: float  # Shapley share of log p(t,i) - log p(mu_t, mu_i)
    image_part: float
    has_image: bool  # False for prepare's white dummy
    regions: np.ndarray | None = None  # [grid, grid], None when no image or unused
    text_vec: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    image_vec: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    image_view: Any = field(default=None, repr=False)  # feature map or pixels, for removal

    @property
    def text_share(self) -> float:
        total = abs(self.text_part) + abs(self.image_part)
        return abs(self.text_part) / total if total > 0 else 0.5

    def to_json(self, classes: list[str]) -> dict[str, Any]:
        """What predict --explain prints and the page shows (no vectors)."""
        return {
            "predicted": classes[self.predicted],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, self.proba)},
            "words": [
                {"word": w, "score": round(float(s), 6)}
                for w, s in zip(self.words, self.word_scores)
            ],
            "image": None
            if self.regions is None
            else {"grid": [[round(float(x), 6) for x in row] for row in self.regions]},
            "no_image": not self.has_image,
            "share": {
                "text": round(self.text_share, 4),
                "image": round(1 - self.text_share, 4),
                "text_logp": round(self.text_part, 6),
                "image_logp": round(self.image_part, 6),
            },
        }


def log_softmax(module: torch.nn.Module, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Log-probabilities as predict_proba makes them: logits over the fitted temperature."""
    logits = module(text=text, image=image)
    temperature = getattr(module, "temperature", None)
    if temperature is not None:
        logits = logits / temperature.to(logits.dtype)
    return torch.log_softmax(logits, dim=1)


def log_prob(
    module: torch.nn.Module, text: torch.Tensor, image: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    return log_softmax(module, text, image).gather(1, target.view(-1, 1)).squeeze(1)


def as_double(module: FusionMLP) -> FusionMLP:
    """A float64 copy (exact sums for the decompositions); the model itself stays float32."""
    if next(module.parameters()).dtype == torch.float64:
        return module
    return copy.deepcopy(module).double().eval()


def modality_shapley(
    module: FusionMLP, text: np.ndarray, image: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(text part, image part) per row; an unused modality gets 0."""
    t, i = (torch.as_tensor(x, dtype=torch.float64) for x in (text, image))
    m = as_double(module)
    means = {k: getattr(m, f"{k}_mean", None) for k in ("text", "image")}
    mt = means["text"].expand_as(t) if means["text"] is not None else t
    mi = means["image"].expand_as(i) if means["image"] is not None else i
    y = torch.as_tensor(target)
    with torch.no_grad():
        f = {
            (a, b): log_prob(m, ta, ib, y)
            for a, ta in (("t", t), ("mt", mt))
            for b, ib in (("i", i), ("mi", mi))
        }
    text_part = 0.5 * ((f["t", "i"] - f["mt", "i"]) + (f["t", "mi"] - f["mt", "mi"]))
    image_part = 0.5 * ((f["t", "i"] - f["t", "mi"]) + (f["mt", "i"] - f["mt", "mi"]))
    return text_part.numpy(), image_part.numpy()


def cell_contributions(
    module: FusionMLP, text: np.ndarray, maps: np.ndarray, target: int, steps: int
) -> tuple[np.ndarray, float]:
    """Per-cell share [h, w] of g . (v - mu) for one image's feature map [D, h, w] (float64);
    also returns g . (v - mu) itself. g: the gradient of log p(target) at the pooled vector,
    averaged over `steps` midpoints of the path mu -> v."""
    m = as_double(module)
    f = torch.as_tensor(maps, dtype=torch.float64)
    d, h, w = f.shape
    v, mu = f.mean(dim=(1, 2)), m.image_mean
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    path = (mu + alphas[:, None] * (v - mu)).requires_grad_(True)
    t = torch.as_tensor(text, dtype=torch.float64).expand(steps, -1)
    log_prob(m, t, path, torch.full((steps,), target)).sum().backward()
    g = path.grad.mean(dim=0)
    cells = torch.einsum("d,dhw->hw", g, f - mu[:, None, None]) / (h * w)
    return cells.detach().numpy(), float(g @ (v - mu))


def grid_slices(size: int, grid: int) -> list[slice]:
    return [slice(r * size // grid, (r + 1) * size // grid) for r in range(grid)]


class Explainer:
    """Explains posts for a trained model and its encoder (chooses the methods it can use)."""

    def __init__(
        self,
        module: FusionMLP,
        encoder: Encoder,
        method: str = "auto",
        steps: int = 16,
        grid: int = 7,
        text_batch: int = 32,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"explain.method={method!r} is not one of {', '.join(METHODS)}")
        self.module, self.encoder = module.eval(), encoder
        self.exact_module = as_double(module)
        self.steps, self.grid, self.text_batch = steps, grid, text_batch
        self.uses = set(module.inputs)
        text_model = getattr(encoder, "text_model", None)
        gradients = isinstance(text_model, torch.nn.Module) and hasattr(text_model, "tokenizer")
        if method == "integrated_gradients" and not gradients:
            raise ValueError(
                f"explain.method=integrated_gradients needs the offline encoder's "
                f"torch MiniLM; encoder {encoder.name!r} has none: use occlusion"
            )
        self.text_method = (
            "integrated_gradients" if gradients and method != "occlusion" else "occlusion"
        )
        # With EfficientNet's 7x7 map (the offline encoder pools it) a region is a map cell:
        # removed by setting it to the training mean, whichever method scores it; without one,
        # a region is a block of pixels, removed by zeroing it and re-encoding.
        self.image_net = getattr(encoder, "image_net", None)
        has_map = isinstance(self.image_net, torch.nn.Module)
        self.image_removal = "feature_cell_to_training_mean" if has_map else "pixels_to_zero"
        self.image_method = "feature_map" if has_map and method != "occlusion" else "occlusion"
        # Share of the shorter image side the encoder's centre crop keeps (the page draws it).
        size = getattr(encoder.preprocess, "size", None)
        self.view_fraction = (
            size / (size + CROP_PADDING)
            if isinstance(encoder.preprocess, LitePreprocess) and size
            else 1.0
        )
        self._text_cache: dict[str, np.ndarray] = {}
        self.seconds = {"text": 0.0, "image": 0.0}  # attribution time, for the cost figures

    # -- encoding, through the encoder's own calls ------------------------------------------
    def text_vectors(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._text_cache}, key=lambda t: (len(t), t))
        for b in range(0, len(todo), self.text_batch):
            chunk = todo[b : b + self.text_batch]
            self._text_cache.update(zip(chunk, self.encoder.encode_text(chunk)))
        return (
            np.stack([self._text_cache[t] for t in texts])
            if texts
            else np.zeros((0, self.encoder.text_dim), np.float32)
        )

    def image_view(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(pooled vector, what region removal works on) for one preprocessed image."""
        if self.image_removal == "feature_cell_to_training_mean":
            enc = self.encoder
            batch = pixels[None].to(enc.device, memory_format=torch.channels_last)
            with (
                torch.inference_mode(),
                torch.autocast(
                    enc.device.type, torch.bfloat16, enabled=getattr(enc, "autocast", False)
                ),
            ):
                maps = self.image_net.extract_features(batch).float()
            # The same reduction as the encoder's, so the vector is bit-identical to its own.
            vector = maps.mean(dim=(2, 3))[0].cpu().numpy()
            return vector, maps[0].cpu().numpy()
        return self.encoder.encode_images(pixels[None])[0], pixels.numpy()

    def region_vectors(self, view: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Image vectors with the regions where `keep` [M, cells] is False removed."""
        keep = np.asarray(keep, bool)
        if self.image_removal == "feature_cell_to_training_mean":
            d = view.shape[0]
            cells = view.reshape(d, -1)
            mu = self.module.image_mean.numpy()[:, None]
            kept = np.where(keep[:, None, :], cells[None], mu[None])
            return kept.mean(axis=2).astype(np.float32)
        rows = grid_slices(view.shape[1], self.grid)
        cols = grid_slices(view.shape[2], self.grid)
        batch = np.repeat(view[None], len(keep), axis=0)
        for m, mask in enumerate(keep):
            for c in np.flatnonzero(~mask):
                batch[m, :, rows[c // self.grid], cols[c % self.grid]] = 0.0
        out = [
            self.encoder.encode_images(torch.from_numpy(batch[s : s + 16]))
            for s in range(0, len(batch), 16)
        ]
        return np.concatenate(out)

    def target_proba(self, text: np.ndarray, image: np.ndarray, target: int) -> np.ndarray:
        from stages.model import predict_proba

        return predict_proba(self.module, text, image)[:, target]

    # -- attributions ------------------------------------------------------------------------
    def word_scores(
        self, text: str, text_vec: np.ndarray, image_vec: np.ndarray, target: int
    ) -> np.ndarray:
        spans = word_spans(text)
        if not spans or "text" not in self.uses:
            return np.zeros(len(spans))
        if self.text_method == "integrated_gradients":
            return self._integrated_gradients(text, spans, image_vec, target)
        keep = ~np.eye(len(spans), dtype=bool)
        variants = [drop_words(text, spans, k) for k in keep]
        vecs = self.text_vectors(variants)
        full = np.log(self.target_proba(text_vec[None], image_vec[None], target))
        less = np.log(self.target_proba(vecs, np.repeat(image_vec[None], len(vecs), 0), target))
        return full - less

    def _integrated_gradients(
        self, text: str, spans: list[tuple[int, int]], image_vec: np.ndarray, target: int
    ) -> np.ndarray:
        from captum.attr import LayerIntegratedGradients

        st = self.encoder.text_model  # type: ignore[attr-defined]
        tok = st.tokenizer(
            [text],
            truncation=True,
            max_length=st.max_seq_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets = tok.pop("offset_mapping")[0].tolist()
        special = tok.pop("special_tokens_mask").bool().to(st.device)
        tok = {k: v.to(st.device) for k, v in tok.items()}  # MiniLM may sit on a GPU
        ids = tok["input_ids"]
        baseline = torch.where(special, ids, torch.full_like(ids, st.tokenizer.pad_token_id))
        extra = {k: v for k, v in tok.items() if k != "input_ids"}
        image = torch.as_tensor(image_vec, dtype=torch.float32)[None]

        def forward(input_ids: torch.Tensor) -> torch.Tensor:
            n = len(input_ids)
            feats = {"input_ids": input_ids, **{k: v.expand(n, -1) for k, v in extra.items()}}
            emb = st(feats)["sentence_embedding"].float().to(image.device)  # the MLP: CPU
            return log_softmax(self.module, emb, image.expand(n, -1))

        layer = st[0].auto_model.embeddings.word_embeddings
        attr = LayerIntegratedGradients(forward, layer).attribute(
            ids,
            baselines=baseline,
            target=target,
            n_steps=self.steps,
            method="gausslegendre",
            internal_batch_size=self.steps,
        )
        token_scores = attr.sum(dim=-1)[0].detach().double().cpu().numpy()
        starts = [s for s, _ in spans]
        scores = np.zeros(len(spans))
        for (s, e), score, sp in zip(offsets, token_scores, special[0].tolist()):
            if e > s and not sp:
                scores[bisect.bisect_right(starts, s) - 1] += score
        return scores

    def region_scores(
        self, view: np.ndarray, text_vec: np.ndarray, image_vec: np.ndarray, target: int
    ) -> np.ndarray:
        if self.image_method == "feature_map":
            return cell_contributions(self.exact_module, text_vec, view, target, self.steps)[0]
        shape = (
            view.shape[1:]
            if self.image_removal == "feature_cell_to_training_mean"
            else (self.grid, self.grid)
        )
        cells = shape[0] * shape[1]
        keep = ~np.eye(cells, dtype=bool)
        vecs = self.region_vectors(view, keep)
        full = np.log(self.target_proba(text_vec[None], image_vec[None], target))
        less = np.log(self.target_proba(np.repeat(text_vec[None], cells, 0), vecs, target))
        return (full - less).reshape(shape)

    def explain(
        self, texts: list[str], pixels: list[torch.Tensor], has_image: list[bool]
    ) -> list[Explanation]:
        """One Explanation per post (texts as cleaned by prepare; preprocessed images)."""
        torch.manual_seed(0)  # nothing here is random; pinned in case a backend is
        text_vecs = self.text_vectors(texts)
        views = [self.image_view(p) for p in pixels]
        image_vecs = np.stack([v for v, _ in views])
        from stages.model import predict_proba

        proba = predict_proba(self.module, text_vecs, image_vecs)
        targets = proba.argmax(axis=1)
        text_part, image_part = modality_shapley(self.exact_module, text_vecs, image_vecs, targets)
        out = []
        for i, text in enumerate(texts):
            y = int(targets[i])
            regions, start = None, time.perf_counter()
            if has_image[i] and "image" in self.uses:
                regions = self.region_scores(views[i][1], text_vecs[i], image_vecs[i], y)
            middle = time.perf_counter()
            words = self.word_scores(text, text_vecs[i], image_vecs[i], y)
            self.seconds["image"] += middle - start
            self.seconds["text"] += time.perf_counter() - middle
            out.append(
                Explanation(
                    text,
                    [text[s:e] for s, e in word_spans(text)],
                    words,
                    proba[i],
                    y,
                    float(text_part[i]),
                    float(image_part[i]),
                    has_image[i],
                    regions,
                    text_vecs[i],
                    image_vecs[i],
                    views[i][1],
                )
            )
        return out
