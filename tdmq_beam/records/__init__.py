"""Records onto MQTT messages: `MessageMapping`, payload encoders and mappings from Avro schemas."""
