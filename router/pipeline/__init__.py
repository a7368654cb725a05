"""The request pipeline, transport-free: one RequestContext through admit -> reserve -> route ->
stream -> settle (pipeline.py)."""
