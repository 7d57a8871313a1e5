"""Test and benchmark helpers (the kmock Kubernetes emulator harness). Not used at run time."""
