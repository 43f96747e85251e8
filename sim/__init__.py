"""Local stand-ins for the cloud side of the relay (not deployed).

Skyporten (Maskinporten issuer), Entra ID, Key Vault and Bane NOR's payload manager gateway, each an
HTTPS server on loopback that checks what the real service checks and answers with its real shapes.
"""
