"""/v1 routes of this part, included by gateway.urls."""

from django.urls import path

from . import views_responses

urlpatterns = [
    path("responses", views_responses.ResponsesView.as_view(), name="responses"),
    path(
        "responses/<str:response_id>",
        views_responses.ResponseDetailView.as_view(),
        name="response",
    ),
    path(
        "responses/<str:response_id>/input_items",
        views_responses.ResponseInputItemsView.as_view(),
        name="response_input_items",
    ),
]
