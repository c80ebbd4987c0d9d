import hmac
from dataclasses import asdict

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobs.health import DEFAULT_SCOPE, SCOPES, readiness_report


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Deliberately checks nothing else, so a broker outage
    never makes an orchestrator restart healthy web processes."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness of the whole deployment, or with `?scope=web` of this web process alone."""
    scope = request.GET.get("scope", DEFAULT_SCOPE)
    if scope not in SCOPES:
        return JsonResponse(
            {
                "detail": "Unknown readiness scope.",
                "errors": {"scope": [f"Must be one of: {', '.join(SCOPES)}."]},
            },
            status=400,
        )
    checks = readiness_report(scope=scope)
    ready = all(result.ok for result in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "fail", "checks": {k: asdict(v) for k, v in checks.items()}},
        status=200 if ready else 503,
    )


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text (jobs/metrics.py), behind METRICS_BEARER_TOKEN when it is set."""
    token = settings.METRICS_BEARER_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time: a token guessed byte by byte from response times is no token.
    # The scheme's name is case-insensitive (RFC 9110).
    if token and not (
        scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
    ):
        return HttpResponse(
            "/metrics needs Authorization: Bearer <METRICS_BEARER_TOKEN>.\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
