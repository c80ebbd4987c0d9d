"""The pipeline's steps called as services, one after the other as the canvas runs them.

No worker: the `db` fixture's transaction never commits, so the upload's pipeline is never
published, and each step runs here, in the test's process, on a MEDIA_ROOT of its own.
"""

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from media.images import VARIANTS
from media.models import Upload, UploadVariant
from media.services import (
    upload_create,
    upload_file_path,
    upload_finalize,
    upload_normalize,
    upload_variant_make,
)
from tests.media.images_for_tests import encoded, gradient


@pytest.fixture
def photo_upload(db, settings, tmp_path) -> Upload:
    """A 4000x3000 JPEG, accepted by the request path and not yet processed."""
    settings.MEDIA_ROOT = tmp_path / "media"
    owner = get_user_model().objects.create_user("maker@example.com", "correct horse battery")
    content = encoded(gradient(4000, 3000), "JPEG", quality=90)
    return upload_create(owner=owner, file=SimpleUploadedFile("photo.jpg", content))


def test_normalize_makes_the_variant_that_needs_every_pixel_and_its_own_task_leaves_it(
    photo_upload,
):
    upload_id = str(photo_upload.pk)
    # given a 12 MP photo that normalize has processed
    upload_normalize(upload_id=upload_id)
    # then normalize made `large` (2048 px: no reduced-scale decode of 4000 px serves it) and
    # recorded it, with the progress that one of four variants stands for
    (large,) = UploadVariant.objects.filter(upload_id=upload_id)
    assert (large.name, large.width, large.height) == ("large", 2048, 1536)
    large_file = upload_file_path(upload_id, "large")
    assert large_file.stat().st_size == large.bytes
    assert Upload.objects.get(pk=upload_id).progress == 20 + 79 // 4
    written = large_file.stat()
    # when every variant task of the group runs, `large`'s among them
    for spec in VARIANTS:
        upload_variant_make(upload_id=upload_id, name=spec.name)
    # then large's task found its variant made and left file and row as they were
    assert large_file.stat().st_mtime_ns == written.st_mtime_ns
    assert large_file.stat().st_ino == written.st_ino
    assert UploadVariant.objects.get(upload_id=upload_id, name="large").pk == large.pk
    # and the others made theirs, so finalize finds every variant and marks the upload ready
    assert UploadVariant.objects.filter(upload_id=upload_id).count() == len(VARIANTS)
    assert upload_finalize(upload_id=upload_id) is True
    assert Upload.objects.get(pk=upload_id).status == Upload.Status.READY
