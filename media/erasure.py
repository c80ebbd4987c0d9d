"""What an account's erasure erases of the media app (the registry: accounts/erasure.py)."""

from accounts.erasure import ErasureArea, erasure_area_register
from media.models import Upload
from media.services import upload_folders_delete

# An upload's variants go with it (their foreign key cascades); its files are its folder.
erasure_area_register(
    ErasureArea(
        name="media.Upload",
        model=Upload,
        rows=lambda user: Upload.objects.filter(owner=user),
        task_argument="upload_id",
        idempotency_keys=lambda ids: [f"media.upload_ready:{upload_id}" for upload_id in ids],
        files_erase=lambda ids: upload_folders_delete(upload_ids=ids),
    )
)
