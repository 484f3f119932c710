"""The tests' fault app: fedimdb's own ServerApp and ClientApp, the ClientApp wrapped in a Flower
client mod that commits faults (tests/fault_app/faults.py), so that the server's defences and the
recovery from lost nodes can be checked end to end.

Only the tests install it: :func:`tests.conftest.fault_app` writes a Flower App folder of fedimdb's
own files, this package, and the fault plan, and orchestrate.py runs it with ``--app-dir``.
fedimdb's own app (``client.client_app:app``) holds no fault code.
"""
