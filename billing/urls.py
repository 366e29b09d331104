"""Usage dashboard and statements of an organization."""

from django.urls import path

from . import views

org = "orgs/<slug:org_slug>/"
statement = org + "statements/<int:pk>"

urlpatterns = [
    path(org + "usage/", views.usage_dashboard, name="usage_dashboard"),
    path(org + "usage/export.csv", views.usage_export, name="usage_export"),
    path(org + "statements/", views.statement_list, name="statement_list"),
    path(statement + "/", views.statement_detail, name="statement_detail"),
    path(statement + ".csv", views.statement_export, name="statement_export"),
]
