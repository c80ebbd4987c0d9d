"""What every API endpoint shares: bearer tokens, strict JSON, and one error format.

Errors are always `{"detail": "...", "errors": {field: [messages]}}` with a 4xx status, whether
DRF answers (a view's exception) or Django does (no URL matched, a request Django refuses).
"""

import json

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# Paths whose clients are programs: they get errors as JSON, even those Django answers before any
# view runs. /files/ serves upload files to API clients and the pages alike (media/views.py).
API_PATH_PREFIXES = ("/api/", "/files/")


class StrictJSONParser(JSONParser):
    """JSON whose strings can be stored and hashed: lone surrogates ("\\ud800") are valid JSON
    escapes but not valid UTF-8, and would fail deep inside the database driver or the hasher
    as a 500. They are refused here, at the door, as a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise exceptions.ParseError(
                "JSON parse error - invalid unicode in a string."
            ) from error
        if not isinstance(data, dict):
            raise exceptions.ParseError("The request body must be a JSON object.")
        return data


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


def exception_handler(error, context):
    if isinstance(error, RequestDataTooBig):
        # Raised by Django while reading the body, before any parser runs.
        error = RequestTooLarge()
    response = drf_exception_handler(error, context)
    if response is None:
        return None  # not an API error: Django's handler answers (and logs) it
    # In JSON whatever the view renders on success: the docs page (HTML) and the schema (YAML)
    # answer a wrong method in the same shape as every other endpoint.
    context["request"].accepted_renderer = JSONRenderer()
    context["request"].accepted_media_type = JSONRenderer.media_type
    data = response.data
    if isinstance(data, dict) and set(data) <= {"detail"}:
        messages = _messages(data.get("detail", ""))
        body = {"detail": messages[0] if messages else "", "errors": {}}
    elif isinstance(data, dict):
        errors = {field: _messages(value) for field, value in data.items() if field != "detail"}
        detail = str(data.get("detail") or _first_message(errors) or "Invalid input.")
        body = {"detail": detail, "errors": errors}
    else:
        messages = _messages(data)
        body = {"detail": messages[0] if messages else "Invalid input.", "errors": {}}
    return Response(body, status=response.status_code, headers=_kept_headers(response))


def _messages(value) -> list[str]:
    if isinstance(value, list | tuple):
        return [message for item in value for message in _messages(item)]
    if isinstance(value, dict):
        # A nested object's errors keep the names of their fields ("keys: auth: ...").
        return [f"{key}: {message}" for key, item in value.items() for message in _messages(item)]
    return [str(value)]


def _first_message(errors: dict[str, list[str]]) -> str | None:
    for field, messages in errors.items():
        if messages:
            return messages[0] if field == "non_field_errors" else f"{field}: {messages[0]}"
    return None


def _kept_headers(response: Response) -> dict[str, str]:
    return {
        name: response[name]
        for name in ("Retry-After", "WWW-Authenticate", "Allow")
        if response.has_header(name)
    }


# --- errors Django answers before (or instead of) a DRF view -------------------------------------
# Django's error handlers (handler404 and its kin in config/urls.py): the error shape for API
# paths, Django's own pages everywhere else. Django calls them with DEBUG off; with it on it shows
# its debug pages instead, for API paths too.


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    # No URL pattern matched, as for /api/v1/uploads/not-a-uuid (the uuid converter refuses it).
    if _is_api(request):
        return _error(404, "Not found.")
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    # Refused by Django itself: an unknown Host header, too many form fields or files.
    if _is_api(request):
        return _error(400, "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _error(403, "Permission denied.")
    return defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return _error(500, "Server error.")
    return defaults.server_error(request)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PATH_PREFIXES)


def _error(status_code: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail, "errors": {}}, status=status_code)
