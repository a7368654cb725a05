"""OpenAI-compatible ingress and the decisions it makes (tokens, context cap, pools, balancing)."""
