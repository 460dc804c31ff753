from django.urls import path

from . import message_batches, views

urlpatterns = [
    path("v1/files", views.files_root),
    path("v1/files/<str:file_id>", views.file_one),
    path("v1/files/<str:file_id>/content", views.file_content),
    path("v1/batches", views.batches_root),
    path("v1/batches/<str:batch_id>", views.batch_one),
    path("v1/batches/<str:batch_id>/cancel", views.batch_cancel),
    path("v1/messages/batches", message_batches.root),
    path("v1/messages/batches/<str:batch_id>", message_batches.retrieve),
    path("v1/messages/batches/<str:batch_id>/cancel", message_batches.cancel),
    path("v1/messages/batches/<str:batch_id>/results", message_batches.results),
]
