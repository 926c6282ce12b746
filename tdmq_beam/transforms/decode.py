"""`DecodeMqttMessages`: received messages back into records, with a ``failed`` output for those that do not fit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.metric import Metrics

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.json_documents import DEFAULT_MAX_DEPTH
from tdmq_beam.records.message_decoding import MessageDecoder
from tdmq_beam.records.payload import RecordError
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.transforms.batched_calls import FAILED
from tdmq_beam.transforms.outputs import output, par_do_with_outputs
from tdmq_beam.transforms.results import FailedMessage

__all__ = ["DecodeMqttMessages", "DecodeResult"]

_NAMESPACE = "tdmq_beam.DecodeMqttMessages"


class DecodeResult(NamedTuple):
    """What `DecodeMqttMessages` returns.

    Attributes:
        records: the decoded records (dicts of the schema's fields).
        failed: `FailedMessage` for each message that did not decode: the
            `ReceivedMessage` as ``element``, ``error_kind`` ``invalid_record``
            and the reason.
    """

    records: pvalue.PCollection
    failed: pvalue.PCollection


class _DecodeFn(beam.DoFn):
    def __init__(self, decoder: MessageDecoder, pairs: bool) -> None:
        self._decoder = decoder
        self._pairs = pairs
        self._decoded = Metrics.counter(_NAMESPACE, "decoded")
        self._failures = Metrics.counter(_NAMESPACE, "decode_failures")

    def process(self, message: ReceivedMessage) -> Iterator[Any]:
        try:
            record = self._decoder.decode(message)
        except RecordError as exc:
            self._failures.inc()
            failure = FailedMessage(message, message.topic, None, "invalid_record", str(exc), 0)
            yield output(FAILED, failure, self._pairs)
            return
        self._decoded.inc()
        yield output(None, record, self._pairs)


class DecodeMqttMessages(beam.PTransform):
    """Decodes `ReceivedMessage` into records with the schema (and mapping) used to write them.

    A message that does not decode (topic off the template, payload not JSON or
    not Avro, a value the schema does not allow) goes to ``failed`` with the
    reason and the whole message; the pipeline goes on.

    Args:
        schema: the Avro record schema (dict, JSON text or ``.avsc`` path) with
            its ``mqtt.*`` annotations; or a ready `MessageDecoder`.
        mapping_file: a mapping file (or dict) beside the schema, as for writing.
        max_depth: a JSON payload nested deeper (arrays and objects) goes to ``failed``
            (Python's parser would raise `RecursionError` on the worst, every time the
            message came again). Defaults to 64.

    Raises:
        ConfigurationError: the schema or mapping cannot work, naming the field.
    """

    def __init__(self, schema: Any, *, mapping_file: Any = None, max_depth: int | None = None) -> None:
        super().__init__()
        if isinstance(schema, MessageDecoder):
            if mapping_file is not None or max_depth is not None:
                raise ConfigurationError("give mapping_file and max_depth to the MessageDecoder, not beside it")
            self._decoder = schema
        else:
            depth = DEFAULT_MAX_DEPTH if max_depth is None else max_depth
            self._decoder = MessageDecoder(schema, mapping_file, max_depth=depth)

    def expand(self, messages: pvalue.PCollection) -> DecodeResult:
        outputs = par_do_with_outputs(
            messages,
            "Decode",
            lambda pairs: _DecodeFn(self._decoder, pairs),
            "records",
            {"records": dict[str, Any], FAILED: FailedMessage},
        )
        return DecodeResult(outputs["records"], outputs[FAILED])

    def display_data(self) -> dict[str, Any]:
        return {"schema": self._decoder.schema.get("name", "record")}
