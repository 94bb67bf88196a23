"""fastnets: a JAX research codebase for efficient deep networks.

`kernels/` and `experiments/` live at the top of the repository (see docs/ARCHITECTURE.md) and are
installed as the subpackages `fastnets.kernels` and `fastnets.experiments` through `package_dir`:
after `pip install .`, `python -m fastnets.experiments.<name>` runs from any directory, and
`python -m experiments.<name>` keeps working inside the checkout.
"""

import os

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.11",
    "optax>=0.2.5",
    "chex>=0.1.90",
    "absl-py>=2.1",
    "numpy>=1.26",
    "ml_dtypes>=0.5",
    "tensorflow-datasets>=4.9.9",
    "orbax-checkpoint>=0.11",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
]

EXTRAS = {
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "scipy>=1.11",
        "mpmath>=1.3",
        "nbformat>=5.9",
        "nbclient>=0.10",
        "ipykernel>=6.29",
        "ruff>=0.6",
    ],
    "gpu": ["jax[cuda12]>=0.10"],
}

setuptools.setup(
    name="fastnets",
    version="0.1.0",
    description=("Efficient deep networks in JAX: reversible nets, Fastfood, low precision, "
                 "sparse conv."),
    long_description=(open("README.md", encoding="utf-8").read()
                      if os.path.exists("README.md") else ""),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=(setuptools.find_packages(include=["fastnets", "fastnets.*"])
              + ["fastnets.kernels", "fastnets.experiments"]),
    package_dir={"fastnets.kernels": "kernels", "fastnets.experiments": "experiments"},
    # experiments/tuning/*.json: the committed sweeps the quick settings read (common.apply_tuning).
    package_data={"fastnets.data": ["files/*.gz"], "fastnets.kernels": ["csrc/*.cc", "csrc/*.h"],
                  "fastnets.experiments": ["tuning/*.json"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
