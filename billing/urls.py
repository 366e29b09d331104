"""Usage dashboard, statements, budgets and rate limits of an organization and its projects.

The REST routes of budgets and rate limits are here too, under ``api/v1/`` (they resolve after
``config.api_urls``, which matches none of them), so that billing keeps its routes together.
"""

from django.urls import path

from . import budget_api, budget_views, views

org = "orgs/<slug:org_slug>/"
project = org + "projects/<slug:project_slug>/"
statement = org + "statements/<int:pk>"
budget = org + "budgets/<int:pk>/"

API_ORGANIZATION = "api/v1/organizations/<int:organization_id>/"
API_PROJECT = "api/v1/projects/<int:project_id>/"

urlpatterns = [
    path(org + "usage/", views.usage_dashboard, name="usage_dashboard"),
    path(org + "usage/export.csv", views.usage_export, name="usage_export"),
    path(org + "statements/", views.statement_list, name="statement_list"),
    path(statement + "/", views.statement_detail, name="statement_detail"),
    path(statement + ".csv", views.statement_export, name="statement_export"),
    # Budgets: owners and admins manage them; members read those that apply to them.
    path(org + "budgets/", budget_views.budget_list, name="budgets"),
    path(budget, budget_views.budget_edit, name="budget_edit"),
    path(budget + "delete/", budget_views.budget_delete, name="budget_delete"),
    path(project + "settings/limits/", budget_views.project_limits, name="project_limits"),
    path(
        project + "settings/limits/keys/<int:pk>/",
        budget_views.api_key_limits,
        name="api_key_limits",
    ),
    # REST
    path(API_ORGANIZATION + "budgets/", budget_api.BudgetListView.as_view(), name="api-budgets"),
    path(
        API_ORGANIZATION + "budgets/<int:budget_id>/",
        budget_api.BudgetDetailView.as_view(),
        name="api-budget",
    ),
    path(
        API_PROJECT + "rate-limits/",
        budget_api.ProjectRateLimitView.as_view(),
        name="api-rate-limits",
    ),
    path(
        API_PROJECT + "keys/<int:key_id>/rate-limits/",
        budget_api.ApiKeyRateLimitView.as_view(),
        name="api-key-rate-limits",
    ),
]
