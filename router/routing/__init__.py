"""Routing decisions, pure (no Ray, no FastAPI): which pools can hold a request (pools), and the
one load-booking and ranking rule (load_book) used by the Ray RequestRouter, the ingress and the
fleet simulator."""
