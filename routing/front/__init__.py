"""The /v1 front: the lean ASGI handler, the request path (pipeline.py) and its stages, and one
module per API family, each translating its requests to the internal (OpenAI chat-shaped) form and back."""
