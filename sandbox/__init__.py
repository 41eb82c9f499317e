"""Local stand-ins for the providers, speaking their real wire protocols.

``python -m sandbox`` starts them (``app.run``); ``client.SandboxClient``
inspects what they accepted and arms faults through the control API;
``process.start_sandbox`` runs one as a child process on free ports for tests
and benchmarks. Modules: ``h2server`` (HTTP/2 over TLS), ``apns`` (the APNs
provider API), ``state`` (records, counters, faults), ``control`` (the control
API), ``tls`` and ``keys`` (certificate and signing keys made at run time).
"""
