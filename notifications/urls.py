from django.urls import path

from notifications import api, views

app_name = "notifications"

api_urlpatterns = [
    path("notifications", api.InboxView.as_view(), name="api-inbox"),
    path("notifications/read-all", api.ReadAllView.as_view(), name="api-read-all"),
    path("notifications/preferences", api.PreferencesView.as_view(), name="api-preferences"),
    path("notifications/<uuid:notification_id>/read", api.ReadView.as_view(), name="api-read"),
    path("devices/webpush-key", api.WebPushKeyView.as_view(), name="api-webpush-key"),
    path("devices", api.DevicesView.as_view(), name="api-devices"),
    path("devices/<uuid:device_id>", api.DeviceView.as_view(), name="api-device"),
]

urlpatterns = [
    path("notifications", views.inbox_page, name="inbox"),
    path("notifications/settings", views.settings_page, name="settings"),
]
