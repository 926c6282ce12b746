"""tdmq-beam in Beam YAML: the transforms with plain keyword configuration, and the provider listing.

In a pipeline file (``python -m apache_beam.yaml.main --yaml_pipeline_file=...``)::

    providers:
      - type: python
        config: {}
        transforms:
          WriteToTdmqMqtt: tdmq_beam.beam_yaml.transforms.YamlWriteToTdmqMqtt
          EnrichWithClientStatus: tdmq_beam.beam_yaml.transforms.YamlEnrichWithClientStatus
          SetClientKeepAlive: tdmq_beam.beam_yaml.transforms.YamlSetClientKeepAlive
          ReadFromTdmqMqtt: tdmq_beam.beam_yaml.transforms.YamlReadFromTdmqMqtt

or ``- include: <PROVIDERS_FILE>``, the same listing shipped with the package.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROVIDERS_FILE"]

PROVIDERS_FILE = str(Path(__file__).with_name("providers.yaml"))
"""The provider listing shipped in the package, for a ``providers: - include:`` entry."""
