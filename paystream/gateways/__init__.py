"""Payment gateways: one protocol (base.py), one error model (errors.py), a module per provider."""
