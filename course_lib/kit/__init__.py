"""Plumbing the notebooks use (device, seeds, widgets, style, glossary, launching processes, the shared training loop)
and the package's argument checks (validate.py): no DeepSeek idea lives here."""
