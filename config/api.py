"""What every API endpoint shares: bearer tokens, strict JSON, and one error format.

Errors are always `{"detail": "...", "errors": {field: [messages]}}` with a 4xx status.
"""

import json

from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


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
        return [message for item in value.values() for message in _messages(item)]
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
