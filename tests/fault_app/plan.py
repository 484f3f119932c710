"""The fault plan of this copy of the fault app: written by :func:`tests.conftest.fault_app`."""

PLAN = ""  # "PARTITION:KIND[,PARTITION:KIND ...]" (tests/fault_app/faults.py); empty: no faults
