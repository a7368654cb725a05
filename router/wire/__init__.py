"""Wire formats: Anthropic's Messages API (pure translation, anthropic/) and the answer adapters the
ingress uses for both APIs (answer_formats.py)."""
