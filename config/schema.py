"""The OpenAPI schema (/api/schema, drf-spectacular): every answer an operation can give, errors
included, and request strings as strict as the fields that read them.

Apart from config/api.py because DRF imports that module while it defines APIView (for the
parser setting), and drf-spectacular's AutoSchema needs APIView defined.
"""

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import SAFE_METHODS
from rest_framework.renderers import JSONRenderer

# The characters str.strip() removes (Python's str.isspace), spelled out because the regex
# dialects disagree on `\s`: ECMA's lacks U+001C-U+001F and U+0085 and adds U+FEFF.
_STRIPPED = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# DRF's CharField refuses NUL characters; a trimmed one also refuses what strips down to "".
TEXT_PATTERN = r"^[^\u0000]*$"
NOT_BLANK_TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{_STRIPPED}][^\u0000]*$"


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer (config/api.py)."""

    detail = serializers.CharField(help_text="What went wrong, in a sentence for a person.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Messages per request field (`non_field_errors`: the body as a whole); "
        "empty when no one field is at fault.",
    )


class ApiAutoSchema(AutoSchema):
    """The schema of each operation, with every error answer it can give, all with the one
    error body (ErrorSerializer), and request strings as strict as the fields that read them.

    Error answers are derived from what the view's classes reveal:
      400  a request body, or query parameters other than the page number
      401  an authentication scheme (bad credentials are refused even where none are needed)
      403  the session cookie on an unsafe method (DRF's CSRF check)
      404  path parameters, or a paginated list (a page that does not exist)
      413  a request body (Django's DATA_UPLOAD_MAX_MEMORY_SIZE, a view's own limit)
      415  a request body (in a media type no parser of the view reads)
      429  a method the view lists in `rate_limited_methods`, with a Retry-After header
    An answer only the view knows of, such as login's 403 for an unverified address, is
    declared with @extend_schema(responses=...); a declared status keeps its declaration.
    """

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None  # excluded from the schema
        responses = operation["responses"]
        for status_code, description in self._error_answers(operation):
            responses.setdefault(str(status_code), self._error_response(status_code, description))
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _error_answers(self, operation: dict) -> list[tuple[int, str]]:
        parameters = operation.get("parameters", [])
        page_parameters = {parameter["name"] for parameter in self._get_pagination_parameters()}
        query = {parameter["name"] for parameter in parameters if parameter["in"] == "query"}
        has_body = "requestBody" in operation
        answers = []
        if has_body or query - page_parameters:
            answers.append((400, "The request is invalid: `errors` says which field and why."))
        if any(operation.get("security", [])):
            answers.append((401, "Credentials are missing, invalid or expired."))
        if self.method not in SAFE_METHODS and any(
            isinstance(authenticator, SessionAuthentication)
            for authenticator in self.view.get_authenticators()
        ):
            answers.append((403, "Authenticated by the session cookie without a CSRF token."))
        if any(parameter["in"] == "path" for parameter in parameters) or page_parameters:
            answers.append((404, "No such resource (or not yours), or no such page."))
        if has_body:
            answers.append((413, "The request body is larger than this operation accepts."))
            answers.append((415, "The body is not in a media type this operation accepts."))
        if self.method in getattr(self.view, "rate_limited_methods", ()):
            answers.append((429, "Too many requests: try again after Retry-After seconds."))
        return answers

    def _error_response(self, status_code: int, description: str) -> dict:
        response = {
            "description": description,
            "content": {
                JSONRenderer.media_type: {
                    "schema": self.resolve_serializer(ErrorSerializer, "response").ref
                }
            },
        }
        if status_code == status.HTTP_429_TOO_MANY_REQUESTS:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds until a request may succeed again.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        return response

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            direction == "request"
            and isinstance(field, serializers.CharField)
            and schema.get("type") == "string"
            and not {"format", "pattern"} & schema.keys()
        ):
            refuses_blank = field.trim_whitespace and not field.allow_blank
            schema["pattern"] = NOT_BLANK_TEXT_PATTERN if refuses_blank else TEXT_PATTERN
        return schema
