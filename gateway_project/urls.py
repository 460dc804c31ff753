from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The same API views also answer here when the API handler is bypassed
    # (the test client, WSGI); production traffic reaches them via asgi.py.
    path("", include("routing.urls")),
]
