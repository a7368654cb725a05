"""OpenAI's chat and text completions on the wire: request models (models.py) and response bodies
and SSE chunks from replica events (writer.py). Pure: no Ray, no FastAPI."""
