"""A reader pipeline in its own process, for the tests that kill one: appends each message it reads
(payload, dup flag) to a file as soon as it has it, and runs until killed or until --max-read-time.

    python tests/read_to_file.py HTTP_URL MQTT_URL PREFIX OUT [--share-group G] [--max-read-time S]
        [--max-records N] [--qos Q] [--mqtt-version V] [--ca-cert PEM] [beam args]
"""

from __future__ import annotations

import argparse
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tdmq_beam import ReadFromTdmqMqtt, TdmqConnection


class _AppendFn(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def setup(self) -> None:
        self._file = open(self._path, "a", buffering=1)

    def process(self, message):
        self._file.write(json.dumps({"payload": message.payload.decode(), "dup": message.dup}) + "\n")
        yield message

    def teardown(self) -> None:
        self._file.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("http_url")
    parser.add_argument("mqtt_url")
    parser.add_argument("prefix")
    parser.add_argument("out")
    parser.add_argument("--share-group")
    parser.add_argument("--max-read-time", type=float)
    parser.add_argument("--max-records", type=int)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--mqtt-version", type=int, default=5)
    parser.add_argument("--ca-cert")
    args, beam_args = parser.parse_known_args()
    connection = TdmqConnection(
        args.http_url, username="user0", password="secret0", mqtt_endpoint=args.mqtt_url, ca_cert=args.ca_cert
    )
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        _ = (
            pipeline
            | ReadFromTdmqMqtt(
                connection, "tele/#", client_id_prefix=args.prefix, share_group=args.share_group,
                max_read_time=args.max_read_time, max_records=args.max_records, qos=args.qos,
                mqtt_version=args.mqtt_version,
            )
            | beam.ParDo(_AppendFn(args.out))
        )  # fmt: skip


if __name__ == "__main__":
    main()
