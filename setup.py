"""megatron-infimed: a Megatron-style training codebase for medical vision-language models."""

from setuptools import find_namespace_packages, setup

setup(
    name="megatron-infimed",
    version="0.1.0",
    description="InfiMed-Foundation style medical VLM training on megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace discovery so data folders (convert/hf_files, bench/data) ship as package data.
    packages=find_namespace_packages(include=["megatron_infimed", "megatron_infimed.*"]),
    include_package_data=True,
    package_data={"megatron_infimed": ["curation/*.txt", "curation/*.yaml", "curation/quality/*.txt",
                                      "convert/hf_files/*.py", "bench/data/*.json"]},
    install_requires=[
        # No upper pin: clusters bring their own CUDA build of torch.
        "torch>=2.6",
        "megatron-core==0.16.1",
        # np.bitwise_count (benchmark decontamination) is numpy 2.0+.
        "numpy>=2",
        "sentencepiece",
        "tokenizers",
        "webdataset",
        "pillow",
        "pyyaml",
        "safetensors",
        "tqdm",
        # dist_checkpointing's async/process utilities import it.
        "psutil",
        # Quality-report histograms and the demo's loss curve.
        "matplotlib",
        # Conversion and its exported remote code target transformers 5.
        "transformers>=5.0",
    ],
    extras_require={
        # NVIDIA Apex is optional and never listed: the PyPI package of that name is unrelated.
        "gpu": ["transformer-engine[pytorch]"],
        "wandb": ["wandb"],
        "dicom": ["pydicom"],
        "test": ["pytest", "hypothesis", "pydicom", "ruff"],
    },
    entry_points={
        "console_scripts": [
            "infimed-train=megatron_infimed.cli.train:main",
            "infimed-prepare=megatron_infimed.cli.prepare:main",
            "infimed-convert=megatron_infimed.cli.convert:main",
            "infimed-eval=megatron_infimed.cli.evaluate:main",
            "infimed-bench=megatron_infimed.cli.bench:main",
            "infimed-demo=megatron_infimed.cli.demo:main",
        ]
    },
)
