"""The service client: connection settings, messages, retries, the HTTP transport, the cloud API
and `AsyncTdmqClient` / `TdmqClient`. Usable without Beam, and imports none of it."""
