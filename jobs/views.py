from dataclasses import asdict

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
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
