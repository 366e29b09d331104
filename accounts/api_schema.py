"""OpenAPI description of the project-key authentication (imported by the app's ready())."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api_auth.ApiKeyAuthentication"
    name = "projectKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "lgw_<32 base62 characters><6-character checksum>",
            "description": "A project API key, created on the project's settings page.",
        }
