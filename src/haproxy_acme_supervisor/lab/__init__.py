"""Lab ACME gateway: a vault-style CA used by the demo and the integration tests.

The gateway speaks RFC 8555 but never issues from the CSR. It returns the
certificate stored in its vault for the vault key, whatever key the CSR
carries, which reproduces HAProxy staging a certificate next to a key that
does not match it.
"""
