from django.urls import path

from .front import chat, completions, embeddings, messages, models, responses

urlpatterns = [
    path("v1/chat/completions", chat.chat_completions),
    path("v1/messages", messages.messages),
    path("v1/responses", responses.responses),
    path("v1/responses/input_tokens", responses.input_tokens),
    path("v1/completions", completions.completions),
    path("v1/embeddings", embeddings.embeddings),
    path("v1/models", models.models),
    path("v1/openapi.json", models.openapi),
]
