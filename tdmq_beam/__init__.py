"""tdmq-beam: Apache Beam connector for Tencent Cloud TDMQ for MQTT."""

__version__ = "0.1.0"
