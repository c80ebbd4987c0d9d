"""Reads of uploads that the API and the pages share: who may see which upload is decided here,
once."""

from uuid import UUID

from django.db.models import QuerySet

from media.models import Upload


def uploads_owned(*, user) -> QuerySet[Upload]:
    """The uploads `user` owns, newest first."""
    return Upload.objects.filter(owner=user)


def upload_owned(*, user, upload_id: UUID | str) -> Upload | None:
    """`user`'s upload with this id, with its variants; None for someone else's upload as for
    none at all, so an answer reveals nothing about other people's uploads."""
    return uploads_owned(user=user).filter(pk=upload_id).prefetch_related("variants").first()


def upload_files_visible(*, user, upload_id: UUID | str) -> bool:
    """Whether `user` may fetch this upload's files: its owner, and staff who may view uploads in
    the admin, which shows their previews (the same permission the admin asks for, so staff
    without access to uploads see none)."""
    if user.is_staff and user.has_perm("media.view_upload"):
        uploads = Upload.objects.all()
    else:
        uploads = uploads_owned(user=user)
    return uploads.filter(pk=upload_id).exists()
