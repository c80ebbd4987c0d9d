from django.urls import path

from media import api, views

app_name = "media"

api_urlpatterns = [
    path("uploads", api.UploadListCreateView.as_view(), name="api-uploads"),
    path("uploads/<uuid:upload_id>", api.UploadDetailView.as_view(), name="api-upload"),
]

urlpatterns = [
    path("uploads", views.uploads_page, name="uploads"),
    path("files/<uuid:upload_id>/<str:name>", views.UploadFileView.as_view(), name="file"),
]
