"""The /v1 URLconf: the live fronts (routing) and the Files and Batches APIs (batches), which sit above
routing because their workers run lines through its request path."""

from routing.batches.urls import urlpatterns as batch_patterns
from routing.urls import urlpatterns as live_patterns

urlpatterns = [*live_patterns, *batch_patterns]
