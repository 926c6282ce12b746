"""The files the example jobs read (Avro schemas, Beam YAML pipelines), found in the installed package.

The schemas live at the top of the repository (``schemas/``) and install as the
package ``tdmq_beam_pipelines.schemas`` (see setup.py), so a job finds them
from a wheel as from a checkout, whatever the working directory: what
``--setup_file`` builds for Dataflow workers is such a wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SCHEMAS", "YAML_PIPELINES"]

SCHEMAS = Path(str(resources.files("tdmq_beam_pipelines.schemas")))
"""The directory of the ``.avsc`` files."""

YAML_PIPELINES = Path(__file__).resolve().parent / "yaml"
"""The directory of the Beam YAML pipelines."""
