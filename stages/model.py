"""The classifier over frozen embeddings, and how it is saved, loaded and applied.

`FusionMLP` carries its own standardisation statistics as buffers, so `models/mlp.safetensors`
alone turns raw encoder features into logits; `models/model.json` holds what is needed to
rebuild the module (architecture, classes) and what the run used (encoder, class weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stages.files import atomic_path, write_json

MODALITIES = ("both", "text", "image")
# prepare's settings that shape a model's input (dataset/input.json, recorded in model.json):
# predict cleans and stores new posts with these, whatever params.yaml says now.
INPUT_KEYS = {"strip_urls": bool, "max_side": int, "dummy_size": int}
FUSIONS = ("concat", "gated")
WEIGHTS_FILE = "mlp.safetensors"
META_FILE = "model.json"
# Features whose training spread is below this are left unscaled: dividing by a near-zero std
# would turn noise (or a constant such as the white dummy image) into huge inputs.
MIN_STD = 1e-6


def used_inputs(modality: str) -> tuple[str, ...]:
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r} is not one of {', '.join(MODALITIES)}")
    return ("text", "image") if modality == "both" else (modality,)


class FusionMLP(nn.Module):
    """Standardise each modality, fuse, then a 3-layer MLP to class logits.

    `concat` joins the standardised inputs; `gated` projects each modality to `hidden[0]`
    and mixes them with a learned per-unit sigmoid gate (both modalities only: with one
    input there is nothing to gate, so the fusion is recorded as concat).
    """

    def __init__(
        self,
        dims: dict[str, int],
        n_classes: int,
        modality: str = "both",
        fusion: str = "concat",
        hidden: list[int] | tuple[int, int] = (512, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is not one of {', '.join(FUSIONS)}")
        if len(hidden) != 2:
            raise ValueError(f"hidden must list two layer sizes, got {list(hidden)}")
        self.inputs = used_inputs(modality)
        self.fusion = fusion if len(self.inputs) == 2 else "concat"
        self.config = {
            "dims": {k: int(dims[k]) for k in ("text", "image")},
            "n_classes": int(n_classes),
            "modality": modality,
            "fusion": self.fusion,
            "hidden": [int(h) for h in hidden],
            "dropout": float(dropout),
        }
        for name in self.inputs:
            self.register_buffer(f"{name}_mean", torch.zeros(dims[name]))
            self.register_buffer(f"{name}_std", torch.ones(dims[name]))
        # Fitted on validation after training (stages/calibration.py); forward() returns the
        # raw logits, predict_proba divides by it. 1 = uncalibrated.
        self.register_buffer("temperature", torch.tensor(1.0))
        h1, h2 = hidden
        if self.fusion == "gated":
            self.project = nn.ModuleDict({k: nn.Linear(dims[k], h1) for k in self.inputs})
            self.gate = nn.Linear(sum(dims[k] for k in self.inputs), h1)
            first: nn.Module = nn.Identity()
        else:
            first = nn.Linear(sum(dims[k] for k in self.inputs), h1)
        self.head = nn.Sequential(
            first,
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h2, n_classes),
        )

    def set_standardisation(self, features: dict[str, torch.Tensor]) -> None:
        """Store mean/std of each used modality (call with the training split only)."""
        for name in self.inputs:
            x = features[name].double()
            std = x.std(dim=0, unbiased=False)
            std = torch.where(std < MIN_STD, torch.ones_like(std), std)
            getattr(self, f"{name}_mean").copy_(x.mean(dim=0).float())
            getattr(self, f"{name}_std").copy_(std.float())

    def forward(
        self, text: torch.Tensor | None = None, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        given = {"text": text, "image": image}
        xs = []
        for name in self.inputs:
            if given[name] is None:
                raise ValueError(
                    f"model uses modality {self.config['modality']!r}: "
                    f"'{name}' features are required"
                )
            xs.append((given[name] - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std"))
        if self.fusion == "gated":
            g = torch.sigmoid(self.gate(torch.cat(xs, dim=1)))
            fused = g * self.project["text"](xs[0]) + (1 - g) * self.project["image"](xs[1])
            return self.head(fused)
        return self.head(torch.cat(xs, dim=1))


class EnsembleMLP(nn.Module):
    """The k fold models of cross-validation kept together: logits = the mean of theirs.

    Offers what callers use of a FusionMLP: `inputs`, `fusion`, `config` (the members' plus
    `members`: k), a `temperature` buffer and, per used modality, `<name>_mean`/`_std`
    buffers (the members' average: attribution's "training mean" of a feature).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        member = {k: v for k, v in config.items() if k != "members"}
        self.members = nn.ModuleList(build_model(member) for _ in range(int(config["members"])))
        self.inputs, self.fusion = self.members[0].inputs, self.members[0].fusion
        self.config = {**self.members[0].config, "members": int(config["members"])}
        for name in self.inputs:
            self.register_buffer(f"{name}_mean", torch.zeros(member["dims"][name]))
            self.register_buffer(f"{name}_std", torch.ones(member["dims"][name]))
        self.register_buffer("temperature", torch.tensor(1.0))

    @classmethod
    def of(cls, members: list[FusionMLP]) -> EnsembleMLP:
        ensemble = cls({**members[0].config, "members": len(members)})
        ensemble.members.load_state_dict(nn.ModuleList(members).state_dict())
        for name in ensemble.inputs:
            for stat in ("mean", "std"):
                getattr(ensemble, f"{name}_{stat}").copy_(
                    torch.stack([getattr(m, f"{name}_{stat}") for m in members]).mean(dim=0)
                )
        return ensemble.eval()

    def forward(
        self, text: torch.Tensor | None = None, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.stack([m(text, image) for m in self.members]).mean(dim=0)


FEATURE_KEYS = {
    "text": torch.float32,
    "image": torch.float32,
    "label": torch.int64,
    "id": torch.int64,
}


def read_features(
    path: Path, n_classes: int | None = None, dims: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """One split written by featurize (`text`, `image`, `label`, `id`), checked against the
    contract in docs/DESIGN.md (and `meta.json`'s class count and dims when given), so that
    a malformed file fails here, naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the featurize stage first)")
    tensors = load_file(str(path))
    for key, dtype in FEATURE_KEYS.items():
        if key not in tensors:
            raise ValueError(f"{path}: no '{key}' tensor (has {sorted(tensors)})")
        if tensors[key].dtype != dtype:
            raise ValueError(f"{path}: '{key}' is {tensors[key].dtype}, expected {dtype}")
    n = len(tensors["label"])
    for key in FEATURE_KEYS:
        expected_ndim = 2 if key in ("text", "image") else 1
        if tensors[key].ndim != expected_ndim or len(tensors[key]) != n:
            raise ValueError(
                f"{path}: '{key}' has shape {tuple(tensors[key].shape)}; "
                f"expected {n} rows and {expected_ndim} dimension(s)"
            )
    for key in ("text", "image"):
        if dims is not None and tensors[key].shape[1] != dims[key]:
            raise ValueError(
                f"{path}: '{key}' is {tensors[key].shape[1]}-d but meta.json "
                f"says {dims[key]}; re-run featurize"
            )
        if not torch.isfinite(tensors[key]).all():
            bad = int((~torch.isfinite(tensors[key])).any(dim=1).nonzero()[0])
            raise ValueError(
                f"{path}: '{key}' has NaN/inf values (first at row {bad}, "
                f"id {int(tensors['id'][bad])})"
            )
    if (
        n_classes is not None
        and n
        and not (0 <= int(tensors["label"].min()) and int(tensors["label"].max()) < n_classes)
    ):
        raise ValueError(f"{path}: labels outside 0..{n_classes - 1}")
    return tensors


def read_input_settings(path: Path) -> dict[str, Any]:
    """dataset/input.json as prepare wrote it, checked: exactly INPUT_KEYS, of their types."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the prepare stage first)")
    settings = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(settings, dict)
        or set(settings) != set(INPUT_KEYS)
        or any(type(settings[k]) is not kind for k, kind in INPUT_KEYS.items())
    ):
        wanted = {k: kind.__name__ for k, kind in INPUT_KEYS.items()}
        raise ValueError(
            f"{path}: expected the keys and types {wanted}, got {settings!r}; re-run prepare"
        )
    return settings


def feature_mismatch(model_meta: dict[str, Any], features_meta: dict[str, Any]) -> list[str]:
    """What differs between the features a model was trained on (model.json) and other
    features (a meta.json): classes, encoder, its fingerprint, dims; empty when they agree."""
    return [
        f"{key}: model {model_meta.get(key)!r}, features {features_meta.get(key)!r}"
        for key in ("classes", "encoder", "fingerprint", "dims")
        if model_meta.get(key) != features_meta.get(key)
    ]


def build_model(config: dict[str, Any]) -> FusionMLP | EnsembleMLP:
    if config.get("members"):
        return EnsembleMLP(config)
    return FusionMLP(
        config["dims"],
        config["n_classes"],
        config["modality"],
        config["fusion"],
        config["hidden"],
        config["dropout"],
    )


def save_model(directory: Path, module: nn.Module, meta: dict[str, Any]) -> None:
    """Write `mlp.safetensors` (parameters + standardisation buffers) and `model.json`.

    `model.json` = `meta` (classes, encoder, class weights, ...) plus `architecture`
    (`module.config`), which `load_model` needs to rebuild the module.
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(directory / META_FILE, {**meta, "architecture": module.config})


def load_model(directory: Path) -> tuple[FusionMLP, dict[str, Any]]:
    """Rebuild the trained module (in eval mode, on CPU) and return it with model.json."""
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the train stage first)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "architecture" not in meta:
        raise ValueError(f"{meta_path}: no 'architecture' block; not written by save_model")
    module = build_model(meta["architecture"])
    state = load_file(str(weights_path))
    state.setdefault("temperature", torch.tensor(1.0))  # written before calibration existed
    module.load_state_dict(state, strict=True)
    return module.eval(), meta


@torch.no_grad()
def predict_proba(
    module: FusionMLP,
    text: np.ndarray | torch.Tensor | None,
    image: np.ndarray | torch.Tensor | None,
    batch_size: int = 4096,
    calibrated: bool = True,
) -> np.ndarray:
    """Class probabilities [N, n_classes] (float64, rows sum to 1) for raw encoder features:
    softmax of the logits divided by the module's fitted temperature (calibrated=False: by 1).

    Inputs of an unused modality are ignored and may be None.
    """
    module.eval()
    device = next(module.parameters()).device
    given = {"text": text, "image": image}
    tensors: dict[str, torch.Tensor] = {}
    for name in module.inputs:
        if given[name] is None:
            raise ValueError(
                f"model uses modality {module.config['modality']!r}: '{name}' features are required"
            )
        tensors[name] = torch.as_tensor(given[name], dtype=torch.float32)
        if tensors[name].ndim != 2 or tensors[name].shape[1] != module.config["dims"][name]:
            raise ValueError(
                f"'{name}' features have shape {tuple(tensors[name].shape)}; the "
                f"model expects [N, {module.config['dims'][name]}]"
            )
    sizes = {name: len(t) for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"text and image features differ in row count: {sizes}")
    n = next(iter(sizes.values()))
    temperature = module.temperature.double() if calibrated else 1.0
    out = [torch.zeros((0, module.config["n_classes"]), dtype=torch.float64)]
    for start in range(0, n, batch_size):
        chunk = {k: t[start : start + batch_size].to(device) for k, t in tensors.items()}
        out.append(torch.softmax(module(**chunk).double() / temperature, dim=1).cpu())
    return torch.cat(out).numpy()


def prepared_input(dataset: Path, classes: list[str]) -> dict[str, Any]:
    """prepare's input settings (dataset/input.json), after checking that the features were
    made from prepare's current class list (dataset/classes.json)."""
    prepared = json.loads((Path(dataset) / "classes.json").read_text(encoding="utf-8"))
    if prepared != classes:
        raise ValueError(
            f"features/meta.json has classes {classes} but dataset/classes.json "
            f"{prepared}: the features are stale; re-run featurize"
        )
    return read_input_settings(Path(dataset) / "input.json")


def model_record(
    module: Any,
    meta: dict[str, Any],
    classes: list[str],
    modality: str,
    mode: str,
    weight_map: dict[str, float],
    cfg: dict[str, Any],
    rows: int,
    info: dict[str, Any],
) -> dict[str, Any]:
    """models/model.json: what the model was trained on and with, so predict and evaluate can
    follow it (classes, input settings, encoder fingerprint) and a reader can see how."""
    return {
        "classes": classes,
        "input": meta["input"],
        "encoder": meta.get("encoder"),
        "encoder_model": meta.get("model"),
        "fingerprint": meta.get("fingerprint"),
        "modality": modality,
        "fusion": module.fusion,
        "dims": module.config["dims"],
        "hidden": module.config["hidden"],
        "dropout": module.config["dropout"],
        "weights": mode,
        "class_weights": weight_map,
        "standardisation": {
            "source": "train split" if info["selection"] == "validation split" else "train+val",
            "rows": rows,
            "buffers": [f"{k}_{s}" for k in module.inputs for s in ("mean", "std")],
        },
        "seed": int(cfg["seed"]),
        "label_smoothing": float(cfg["label_smoothing"]),
        **info,
    }
