"""Train the sklearn-regression model: a ridge regression fitted with numpy alone.

The data set is synthetic and deterministic: ten diabetes-like features (age, sex, bmi,
blood pressure and six blood serum measurements, centred and scaled as in the classic
diabetes data) and a disease-progression target. Each model version has its own preset
(seed, sample count, ridge penalty), so retraining reproduces the committed weights.

Usage (from the repository root):

    python training/train.py                      # retrain v1 and v2 into models/
    python training/train.py --version 2          # retrain v2 only
    python training/train.py --output-root /tmp/m # write /tmp/m/v1/model.json, ...

The weights are written as JSON (rounded to a fixed number of decimals) so that a retrain
gives byte-identical files and a change of weights shows up as a readable diff.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

MODEL_NAME = "sklearn-regression"
WEIGHTS_FILE_NAME = "model.json"
FEATURE_NAMES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
# Effects of the features on the target in the simulated population.
TRUE_COEFFICIENTS = (-10.0, -240.0, 520.0, 324.0, -790.0, 475.0, 100.0, 180.0, 750.0, 68.0)
TRUE_INTERCEPT = 152.0
NOISE_STD = 54.0
# Features are standard normal divided by this, so each column has a norm of about one
# over 442 rows, the scale of the classic diabetes data.
FEATURE_SCALE = math.sqrt(442.0)
# The two values of the binary "sex" feature after centring and scaling.
SEX_VALUES = (0.05068012, -0.04464164)
HOLDOUT_SEED = 999
HOLDOUT_SAMPLES = 1000
# Decimals kept in the weights file: far below any effect on predictions, far above the
# last-bit differences between BLAS builds, so a retrain anywhere gives the same bytes.
DECIMALS = 8

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class TrainingPreset:
    """How one version of the model is trained."""

    version: int
    seed: int
    n_samples: int
    alpha: float


PRESETS = {
    # v1: the first model, trained on a diabetes-sized sample with a strong penalty.
    1: TrainingPreset(version=1, seed=1, n_samples=442, alpha=1.0),
    # v2: retrained on a fresh, larger sample with a much lighter penalty.
    2: TrainingPreset(version=2, seed=2, n_samples=1326, alpha=0.05),
}


def make_dataset(*, seed: int, n_samples: int) -> tuple[Matrix, Matrix]:
    """Return features (n_samples x 10) and targets (n_samples) drawn with the given seed."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_samples, len(FEATURE_NAMES)))
    # Total and LDL cholesterol (s1, s2) are strongly correlated, as in the real data.
    latent[:, 5] = 0.9 * latent[:, 4] + math.sqrt(1.0 - 0.9**2) * latent[:, 5]
    features = latent / FEATURE_SCALE
    features[:, 1] = np.where(rng.random(n_samples) < 0.47, SEX_VALUES[0], SEX_VALUES[1])
    noise = rng.normal(0.0, NOISE_STD, n_samples)
    targets = TRUE_INTERCEPT + features @ np.asarray(TRUE_COEFFICIENTS) + noise
    return features, targets


def fit_ridge(features: Matrix, targets: Matrix, *, alpha: float) -> tuple[Matrix, float]:
    """Fit ridge regression in closed form; the intercept is not penalised.

    Returns the coefficients and the intercept.
    """
    feature_means = features.mean(axis=0)
    target_mean = float(targets.mean())
    centred = features - feature_means
    gram = centred.T @ centred + alpha * np.eye(features.shape[1])
    coefficients = np.linalg.solve(gram, centred.T @ (targets - target_mean))
    intercept = target_mean - float(feature_means @ coefficients)
    return coefficients, intercept


def r2_score(targets: Matrix, predictions: Matrix) -> float:
    """Coefficient of determination of predictions against targets."""
    residual = float(np.sum((targets - predictions) ** 2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    return 1.0 - residual / total


def train(preset: TrainingPreset) -> dict[str, object]:
    """Train one model version and return the content of its weights file."""
    features, targets = make_dataset(seed=preset.seed, n_samples=preset.n_samples)
    coefficients, intercept = fit_ridge(features, targets, alpha=preset.alpha)
    coefficients = np.round(coefficients, DECIMALS)
    intercept = round(intercept, DECIMALS)
    holdout_features, holdout_targets = make_dataset(seed=HOLDOUT_SEED, n_samples=HOLDOUT_SAMPLES)
    r2_train = r2_score(targets, features @ coefficients + intercept)
    r2_holdout = r2_score(holdout_targets, holdout_features @ coefficients + intercept)
    return {
        "format": "linear-regression",
        "name": MODEL_NAME,
        "version": preset.version,
        "feature_names": list(FEATURE_NAMES),
        "intercept": intercept,
        "coefficients": [float(value) for value in coefficients],
        "training": {
            "algorithm": "ridge (closed form, numpy)",
            "seed": preset.seed,
            "n_samples": preset.n_samples,
            "alpha": preset.alpha,
            "r2_train": round(r2_train, 4),
            "r2_holdout": round(r2_holdout, 4),
        },
    }


def write_weights(content: dict[str, object], output_dir: Path) -> Path:
    """Write the weights file into output_dir (created if missing) and return its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / WEIGHTS_FILE_NAME
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train the chosen versions and write their weights."""
    default_root = Path(__file__).resolve().parent.parent / "models" / MODEL_NAME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version",
        choices=[*(str(version) for version in PRESETS), "all"],
        default="all",
        help="model version to train (default: all)",
    )
    parser.add_argument(
        "--output-root",
        type=Path,
        default=default_root,
        help="folder that receives vN/model.json (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    versions = sorted(PRESETS) if args.version == "all" else [int(args.version)]
    for version in versions:
        content = train(PRESETS[version])
        path = write_weights(content, args.output_root / f"v{version}")
        figures = content["training"]
        assert isinstance(figures, dict)
        print(
            f"v{version}: alpha={figures['alpha']} n={figures['n_samples']} "
            f"R^2 train={figures['r2_train']:.4f} holdout={figures['r2_holdout']:.4f} -> {path}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
