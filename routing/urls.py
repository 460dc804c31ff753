from django.urls import path

from .front import (
    chat,
    completions,
    embeddings,
    feedback,
    messages,
    models,
    moderations,
    responses,
    stored_responses,
)

urlpatterns = [
    path("v1/chat/completions", chat.chat_completions),
    path("v1/messages", messages.messages),
    path("v1/messages/count_tokens", messages.count_tokens),
    path("v1/responses", responses.responses),
    path("v1/responses/input_tokens", responses.input_tokens),
    path("v1/completions", completions.completions),
    path("v1/embeddings", embeddings.embeddings),
    path("v1/moderations", moderations.moderations),
    path("v1/models", models.models),
    path("v1/feedback", feedback.feedback),
    path("v1/openapi.json", models.openapi),
    path("v1/responses/<str:response_id>", stored_responses.response),
    path("v1/responses/<str:response_id>/input_items", stored_responses.input_items),
    path("v1/responses/<str:response_id>/cancel", stored_responses.cancel),
]
