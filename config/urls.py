from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.urls import api_urlpatterns as accounts_api
from jobs import views as jobs_views

urlpatterns = [
    path("healthz", jobs_views.healthz, name="healthz"),
    path("readyz", jobs_views.readyz, name="readyz"),
    path("metrics", jobs_views.metrics, name="metrics"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include((accounts_api, "accounts-api"))),
    path("admin/", admin.site.urls),
    path("", include("accounts.urls")),
]

if settings.DEBUG:
    from django.conf.urls.static import static

    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
