"""Plumbing the notebooks use (device, seeds, widgets, style, glossary, launching processes, the shared training loop): no DeepSeek idea lives here."""
