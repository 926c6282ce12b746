"""The Avro schemas of the example jobs' records and result files.

A directory of ``.avsc`` files at the top of the repository; installed as the
package ``tdmq_beam_pipelines.schemas`` (see setup.py), so an installed
package finds them (`tdmq_beam_pipelines.package_files.SCHEMAS`).
"""
