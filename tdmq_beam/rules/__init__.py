"""The service's rules, shared by the client and the emulator: documented limits, the message
properties a publish carries, TC3-HMAC-SHA256 signing and the token bucket of its rate limits.

Below both `tdmq_beam.service` (which follows them) and `tdmq_beam.emulator` (which enforces
them), so that neither imports the other.
"""
