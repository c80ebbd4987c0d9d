from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.urls import api_urlpatterns as accounts_api
from jobs import admin as jobs_admin
from jobs import views as jobs_views
from media.urls import api_urlpatterns as media_api
from notifications.urls import api_urlpatterns as notifications_api
from reports.urls import api_urlpatterns as reports_api

urlpatterns = [
    path("healthz", jobs_views.healthz, name="healthz"),
    path("readyz", jobs_views.readyz, name="readyz"),
    path("metrics", jobs_views.metrics, name="metrics"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include((accounts_api, "accounts-api"))),
    path("api/v1/", include((media_api, "media-api"))),
    path("api/v1/", include((reports_api, "reports-api"))),
    path("api/v1/", include((notifications_api, "notifications-api"))),
    path("", include("media.urls")),
    path("", include("reports.urls")),
    path("", include("notifications.urls")),
    # The operator's page, in the admin: its login, its staff check, its look.
    path(
        "admin/operations/",
        admin.site.admin_view(jobs_admin.operations_page),
        name="admin-operations",
    ),
    path("admin/", admin.site.urls),
    path("", include("accounts.urls")),
]

# Errors Django answers itself: JSON under the API's paths, its HTML pages elsewhere.
handler400 = "config.api.bad_request"
handler403 = "config.api.permission_denied"
handler404 = "config.api.not_found"
handler500 = "config.api.server_error"
