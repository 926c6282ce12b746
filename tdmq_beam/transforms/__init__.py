"""The Beam transforms, on one base (`base.CallTransform`): `WriteToTdmqMqtt`, `EnrichWithClientStatus`,
`SetClientKeepAlive`, and `TdmqClientStatusHandler` for Beam's `Enrichment`."""
