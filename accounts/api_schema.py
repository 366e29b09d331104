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


ERROR_STATUSES = {
    "400": "Invalid input: the error names the field (param) and the problem.",
    "401": "No credentials, or a key that is malformed, unknown, revoked, expired or another "
    "project's (always the same body).",
    "403": "Signed in or keyed, but not allowed: a key without the scope, a member asking for "
    "an admin's action.",
    "404": "No such object for this caller (another tenant's objects answer the same).",
    "405": "The path does not take this method.",
    "415": "The body must be JSON (Content-Type: application/json).",
    "429": "A budget or rate limit refused the call (rate limits send Retry-After).",
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: every /api/v1 operation documents its refusals."""
    # The component comes from chat.openai_schema.OPENAI_ERROR, which /v1's operations use.
    if "Error" not in result.get("components", {}).get("schemas", {}):
        raise ValueError("The shared Error component (chat.openai_schema) is missing.")
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            for status, description in ERROR_STATUSES.items():
                operation["responses"].setdefault(
                    status,
                    {"description": description, "content": content},
                )
    return result
