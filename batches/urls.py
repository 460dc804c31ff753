from django.urls import path

from . import views

urlpatterns = [
    path("v1/files", views.files_root),
    path("v1/files/<str:file_id>", views.file_one),
    path("v1/files/<str:file_id>/content", views.file_content),
    path("v1/batches", views.batches_root),
    path("v1/batches/<str:batch_id>", views.batch_one),
    path("v1/batches/<str:batch_id>/cancel", views.batch_cancel),
]
