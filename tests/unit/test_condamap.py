"""Conda dependencies to pip requirements (reconciler.images.condamap)."""

from __future__ import annotations

import pytest

from reconciler.images.condamap import CondaMappingError, conda_to_pip, pip_name


@pytest.mark.parametrize(
    ("conda", "pip"),
    [
        ("numpy", "numpy"),
        ("numpy=1.26", "numpy==1.26.*"),
        ("numpy=1.26.*", "numpy==1.26.*"),
        ("numpy 1.26", "numpy==1.26.*"),
        ("numpy==1.26.4", "numpy==1.26.4"),
        ("numpy=1.26.4=py311h64a7726_0", "numpy==1.26.4"),
        ("numpy 1.26.4 py311h64a7726_0", "numpy==1.26.4"),
        ("scikit-learn>=1.3", "scikit-learn>=1.3"),
        ("scikit-learn >=1.3,<1.5", "scikit-learn>=1.3,<1.5"),
        ("scikit-learn >= 1.3", "scikit-learn>=1.3"),
        ("scipy!=1.11.0", "scipy!=1.11.0"),
        ("scipy~=1.11", "scipy~=1.11"),
        ("conda-forge::pandas", "pandas"),
        ("conda-forge::pandas=2.1", "pandas==2.1.*"),
        ("conda-forge/linux-64::pandas>=2", "pandas>=2"),
        ("pytorch", "torch"),
        ("pytorch::pytorch=2.1", "torch==2.1.*"),
        ("py-xgboost", "xgboost"),
        ("py-xgboost>=2.0", "xgboost>=2.0"),
        ("matplotlib-base", "matplotlib"),
        ("Pillow", "pillow"),
        ("librosa", "librosa"),
        ("numpy[version='>=1.26']", "numpy>=1.26"),
        ("numpy *", "numpy"),
        ("numpy=*", "numpy"),
    ],
)
def test_maps_one_dependency(conda: str, pip: str) -> None:
    assert conda_to_pip([conda]) == (pip,)


@pytest.mark.parametrize(
    "dropped",
    ["python", "python=3.11", "python>=3.9", "pip", "pip=23.3", "setuptools", "wheel", "cpuonly"],
)
def test_python_and_packaging_tools_are_dropped(dropped: str) -> None:
    assert conda_to_pip([dropped]) == ()


def test_order_is_kept_and_blanks_skipped() -> None:
    assert conda_to_pip(["python=3.11", "pip", "numpy=1.26", "", "scikit-learn>=1.3"]) == (
        "numpy==1.26.*",
        "scikit-learn>=1.3",
    )


@pytest.mark.parametrize(
    "native",
    [
        "cudatoolkit=11.8",
        "mkl",
        "libgcc",
        "libgcc-ng>=12",
        "libstdcxx-ng",
        "_libgcc_mutex=0.1=conda_forge",
        "_openmp_mutex",
        "openssl",
        "cuda-nvcc",
        "r-base",
    ],
)
def test_native_packages_are_unmappable(native: str) -> None:
    with pytest.raises(CondaMappingError) as caught:
        conda_to_pip([native])
    assert caught.value.packages == (native,)
    assert native in str(caught.value)


def test_error_names_every_unmappable_package() -> None:
    with pytest.raises(CondaMappingError) as caught:
        conda_to_pip(["numpy", "cudatoolkit=11.8", "pandas", "mkl", "libgcc", "_libgcc_mutex"])
    assert caught.value.packages == ("cudatoolkit=11.8", "mkl", "libgcc", "_libgcc_mutex")
    message = str(caught.value)
    for name in ("cudatoolkit", "mkl", "libgcc", "_libgcc_mutex"):
        assert name in message
    assert "numpy" not in message and "pandas" not in message


def test_conda_or_spec_has_no_pip_form() -> None:
    with pytest.raises(CondaMappingError, match="'or'"):
        conda_to_pip(["numpy 1.25|1.26"])


def test_pip_name() -> None:
    assert pip_name("pytorch") == "torch"
    assert pip_name("python") is None
    assert pip_name("requests") == "requests"
