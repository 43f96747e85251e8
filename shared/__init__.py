"""The Skyporten relay: delivers a partner's export files into Bane NOR's storage through Skyporten.

Modules: config (settings), errors (error tree), signing (Maskinporten key), maskinporten (Skyporten token),
skyporten (Entra exchange and Bane NOR storage client), naming, copier, ledger, relay, and the command line.
"""
