"""Build configuration beyond pyproject.toml: the repository's data folders (training/presets,
training/accelerate, tokenizers, model_cards) are mapped into the package as ``crystext._data.*``
so installed copies read them through ``importlib.resources`` (``crystext.resources``). The
folders stay where they are; nothing is copied in the checkout."""

from setuptools import find_packages, setup

#: package name -> repository folder
DATA_PACKAGES = {
    "crystext._data.presets": "training/presets",
    "crystext._data.accelerate": "training/accelerate",
    "crystext._data.tokenizers": "tokenizers",
    "crystext._data.model_cards": "model_cards",
}

setup(
    packages=find_packages(include=["crystext", "crystext.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "crystext._data.presets": ["*.yaml"],
        "crystext._data.accelerate": ["*.yaml"],
        "crystext._data.tokenizers": ["*/*.json", "*/*.txt", "*/*.model"],
        "crystext._data.model_cards": ["template.md"],
    },
)
