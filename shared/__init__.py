"""The Skyporten relay: delivers a partner's export files into Bane NOR's storage through Skyporten.

Modules: config (settings), errors (error tree), signing (Maskinporten key), skyporten_token (Skyporten token),
banenor_credential (Entra exchange), storage (both sides' storage clients), naming, copier, ledger, relay, and the
command line.
"""
