"""Packaging for tdmq-beam; also what Beam workers install with --setup_file ./setup.py."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="tdmq-beam",
    version="0.1.0",
    description="Apache Beam connector for Tencent Cloud TDMQ for MQTT, with a local emulator of the service",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The top-level schemas/ ships inside the package as tdmq_beam_pipelines.schemas, with the jobs'
    # YAML files: an installed package (what --setup_file builds for Dataflow workers) finds them.
    packages=[
        *find_packages(include=["tdmq_beam", "tdmq_beam.*", "tdmq_beam_pipelines", "tdmq_beam_pipelines.*"]),
        "tdmq_beam_pipelines.schemas",
    ],
    package_dir={"tdmq_beam_pipelines.schemas": "schemas"},
    package_data={
        "tdmq_beam": ["py.typed"],
        "tdmq_beam.beam_yaml": ["providers.yaml"],
        "tdmq_beam_pipelines": ["yaml/*.yaml"],
        "tdmq_beam_pipelines.schemas": ["*.avsc"],
    },
    install_requires=[
        "apache-beam>=2.76",  # apache_beam.io.unbounded_source, under ReadFromTdmqMqtt
        "aiohttp>=3.9",
        "httptools>=0.6",
        "fastavro>=1.9",
        "cachetools>=5",
        "google-api-core>=2",
        "paho-mqtt>=2.1",
        "uvloop>=0.19; platform_system != 'Windows'",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "pytest-examples>=0.0.15",  # finds the docs' Python snippets, which a test runs and lints
            "wheel>=0.40",  # the packaging test builds a wheel without fetching a build environment
            "trustme>=1.1",
            "tencentcloud-sdk-python-common>=3.0.1100",
            "ruff>=0.6",
            "mypy>=1.10",
            "apache-beam[yaml]>=2.76",  # the Beam YAML examples' tests
            "dask[distributed]>=2024.1",  # the backfill on Beam's Dask runner
        ],
        "gcp": ["apache-beam[gcp]>=2.76"],
        "yaml": ["apache-beam[yaml]>=2.76"],
        "dask": ["dask[distributed]>=2024.1"],
    },
    entry_points={"console_scripts": ["tdmq-emulator=tdmq_beam.emulator.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
