"""The Skyporten relay: delivers a partner's export files into Bane NOR's storage through Skyporten.

The modules in the order data flows through them, each with what it owns: docs/architecture.md ("The modules").
"""
